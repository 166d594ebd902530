"""The engine's per-token callbacks as an async iterator, for the HTTP side.

The engine thread hands each :class:`~maas.llm.engine.StepOutput` to the event loop with
``call_soon_threadsafe``; the request's coroutine reads them from a queue. When the consumer
stops early (a client that closed its stream, a cancelled task), the ``finally`` cancels the
sequence, which leaves the batch before the next decode step.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from maas.llm.engine import Constraint, Engine, StepOutput
from maas.llm.sampling import SamplingParams


async def generate(engine: Engine, prompt: list[int], params: SamplingParams,
                   constraint: Constraint | None = None) -> AsyncIterator[list[StepOutput]]:
    """Yield the sequence's outputs as the engine makes them, those that queued up while the
    consumer was busy together; the last list ends with a finish reason."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[StepOutput] = asyncio.Queue()

    def sink(output: StepOutput) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, output)

    ticket = engine.submit(prompt, params, sink, constraint)
    try:
        while True:
            outputs = [await queue.get()]
            while not queue.empty():
                outputs.append(queue.get_nowait())
            yield outputs
            if outputs[-1].finish_reason is not None:
                return
    finally:
        ticket.cancel()
