"""Continuous batching: requests join the running batch between decode steps and leave it the
step they finish or are cancelled.

One thread per replica owns the :class:`~maas.llm.kvcache.KVCache`. Each turn it prefills
waiting prompts into free slots (up to ``max_prefill_tokens`` per turn; a longer prompt goes in
that many tokens a turn, so running streams stall for at most that much prefill), then runs one
decode step over every running sequence. Each
sequence's tokens go to its ``sink`` callback from that thread; :mod:`maas.llm.stream` turns
that into an async iterator for the HTTP side.

    engine = Engine(model_dir, LLMServeConfig(), threads=2)
    ticket = engine.submit(prompt_ids, SamplingParams(max_tokens=64), sink=print)
    ticket.cancel()      # leaves the batch before the next step
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from maas.config.serve import LLMServeConfig
from maas.errors import MaasError
from maas.llm.detok import TextStream
from maas.llm.kvcache import KVCache
from maas.llm.sampling import Sampler, SamplingParams
from maas.llm.sequence import (Constraint, ContextOverflow, EngineStats, Sequence,
                               StepOutput, check_fits)

log = logging.getLogger(__name__)


@dataclass
class Ticket:
    """A submitted request: ``cancel()`` takes it out of the batch before the next step."""

    _sequence: Sequence
    _engine: Engine

    def cancel(self) -> None:
        self._sequence.cancelled = True
        self._engine._wake()


class Engine:
    """A replica's generator: one cache, one scheduling thread, any number of requests."""

    def __init__(self, model_dir: Path, settings: LLMServeConfig, threads: int,
                 tokenizer: object, spin: bool = False):
        self.settings = settings
        self.cache = KVCache(model_dir, settings.max_num_seqs, settings.context_length, threads,
                             spin)
        self.context_length = self.cache.context_length
        self.tokenizer = tokenizer
        self._eos = frozenset(self.cache.shape.eos_token_ids)
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._partial: Sequence | None = None  # a long prompt going in by chunks
        self._cond = threading.Condition()
        self._closed = False
        self._closing = False  # no new requests; the thread ends once the last one finished
        self._steps = itertools.count()
        self._step = 0
        self._finished: dict[str, int] = {}
        self._thread = threading.Thread(target=self._loop, name="maas-llm-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams,
               sink: Callable[[StepOutput], None], constraint: Constraint | None = None) -> Ticket:
        """Queue a prompt; its tokens go to ``sink`` from the engine thread as they come."""
        if not prompt:
            raise ContextOverflow("the prompt is empty: send at least one token of text",
                                  param="messages")
        check_fits(len(prompt), params.max_tokens, self.context_length)
        sequence = Sequence(prompt=list(prompt), params=params, sink=sink, constraint=constraint,
                             sampler=Sampler(params),
                             text=TextStream(self.tokenizer, stop=params.stop))
        with self._cond:
            if self._closing:
                raise MaasError("this version was just replaced; retry", status=503,
                                headers={"Retry-After": "1"})
            self._waiting.append(sequence)
            self._cond.notify()
        return Ticket(sequence, self)

    def stats(self) -> EngineStats:
        with self._cond:
            running = list(self._running)
            waiting = len(self._waiting) + (self._partial is not None)
            return EngineStats(running=len(running), waiting=waiting,
                               cache_tokens=sum(s.length for s in running),
                               cache_capacity=self.cache.slots * self.context_length,
                               steps=self._step, finished=dict(self._finished))

    def close(self, drain: bool = False) -> None:
        """Stop taking requests; ``drain``: return now, and end the thread (freeing the cache)
        once what is queued and running has finished; else end them now and wait."""
        with self._cond:
            self._closing = True
            self._closed = self._closed or not drain
            self._cond.notify()
        if not drain:
            self._thread.join(timeout=10)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._running or self._partial or self._closing):
                    self._cond.wait()
                busy = self._waiting or self._running or self._partial
                if self._closed or (self._closing and not busy):
                    break
                admitted = self._admit()
            try:
                if self._partial is not None:
                    self._prefill_chunk(self._partial)
                elif admitted:
                    self._prefill(admitted)
                self._retire()
                if self._running:
                    self._decode()
                    self._retire()
            except Exception:  # an ORT failure must not leave streams hanging
                log.exception("generation failed; ending the running sequences")
                partial = [self._partial] if self._partial else []
                for sequence in [*self._running, *admitted, *partial]:
                    self._finish(sequence, "error", "")
                with self._cond:
                    self._running.clear()
                    self._partial = None
        for sequence in [*self._waiting, *self._running, *([self._partial] if self._partial
                                                            else [])]:
            self._finish(sequence, "error", "")

    def _admit(self) -> list[Sequence]:
        """Waiting sequences that fit the free slots and this turn's prefill budget (prompts
        are right-padded to the longest, so the budget counts the padding too)."""
        admitted: list[Sequence] = []
        free = self.cache.slots - len(self._running)
        longest, budget = 0, self.settings.max_prefill_tokens
        while self._partial is None and self._waiting and len(admitted) < free:
            head = self._waiting[0]
            if head.cancelled:
                self._waiting.popleft()
                continue
            padded = max(longest, len(head.prompt)) * (len(admitted) + 1)
            if admitted and padded > budget:
                break
            if len(head.prompt) > budget:  # too long for one turn: it goes in by chunks
                self._partial = self._waiting.popleft()
                self._partial.slot = len(self._running)
                break
            longest = max(longest, len(head.prompt))
            admitted.append(self._waiting.popleft())
        return admitted

    def _prefill(self, admitted: list[Sequence]) -> None:
        logits = self.cache.prefill(len(self._running), [s.prompt for s in admitted])
        for sequence in admitted:
            sequence.length = len(sequence.prompt)
        with self._cond:
            self._running.extend(admitted)
        for row, sequence in enumerate(admitted):
            self._emit(sequence, logits[row])

    def _prefill_chunk(self, sequence: Sequence) -> None:
        """The next ``max_prefill_tokens`` of a long prompt; once it is all in, the sequence
        joins the running batch with its first token."""
        if sequence.cancelled:
            self._partial = None
            self._count("cancelled")
            return
        slot = len(self._running)
        if sequence.slot != slot:  # running sequences left: it follows them down
            self.cache.move(sequence.slot, slot, sequence.length)
            sequence.slot = slot
        start = sequence.length
        chunk = sequence.prompt[start:start + self.settings.max_prefill_tokens]
        logits = self.cache.prefill(slot, [chunk], start=start)
        sequence.length += len(chunk)
        if sequence.length == len(sequence.prompt):
            with self._cond:
                self._partial = None
                self._running.append(sequence)
            self._emit(sequence, logits[0])

    def _decode(self) -> None:
        running = self._running
        self._step = next(self._steps)
        last = np.fromiter((s.last for s in running), np.int64, len(running))
        lengths = np.fromiter((s.length for s in running), np.int64, len(running))
        logits = self.cache.decode(last, lengths)
        for row, sequence in enumerate(running):
            sequence.length += 1
            if sequence.first_step < 0:
                sequence.first_step = self._step
            sequence.last_step = self._step
            if not sequence.cancelled:
                self._emit(sequence, logits[row])

    def _emit(self, sequence: Sequence, logits: np.ndarray) -> None:
        if sequence.constraint is not None:
            logits = logits.copy()
            sequence.constraint.mask_logits(logits)
        token, logprob = sequence.sampler.choose(logits)
        sequence.generated += 1
        sequence.last = token
        if sequence.constraint is not None:
            sequence.constraint.accept(token)
        text, reason = "", None
        if token in self._eos:
            text, reason = sequence.text.finish(), "stop"
        else:
            text = sequence.text.push(token)
            if sequence.text.stopped or (sequence.constraint is not None
                                         and sequence.constraint.is_finished):
                reason = "stop"
            elif (sequence.generated >= sequence.params.max_tokens
                  or sequence.length + 1 >= self.context_length):
                text, reason = text + sequence.text.finish(), "length"
        if reason is not None:
            sequence.cancelled = sequence.done = True  # leaves the batch at the next _retire
        self._send(sequence, StepOutput(
            text=text, token_ids=(token,), logprobs=(logprob,) if logprob else (),
            finish_reason=reason, prompt_tokens=len(sequence.prompt),
            completion_tokens=sequence.generated, first_step=sequence.first_step,
            last_step=sequence.last_step))
        if reason is not None:
            self._count(reason)

    def _finish(self, sequence: Sequence, reason: str, text: str) -> None:
        self._count(reason)
        self._send(sequence, StepOutput(
            text=text, token_ids=(), logprobs=(), finish_reason=reason,
            prompt_tokens=len(sequence.prompt), completion_tokens=sequence.generated,
            first_step=sequence.first_step, last_step=sequence.last_step))

    def _count(self, reason: str) -> None:
        self._finished[reason] = self._finished.get(reason, 0) + 1

    @staticmethod
    def _send(sequence: Sequence, output: StepOutput) -> None:
        try:
            sequence.sink(output)
        except Exception:  # a broken consumer cancels its own sequence, nobody else's
            log.exception("a token sink failed; cancelling its sequence")
            sequence.cancelled = True

    def _retire(self) -> None:
        """Drop finished and cancelled sequences, moving the last slots into the gaps."""
        running = self._running
        index = 0
        while index < len(running):
            if not running[index].cancelled:
                index += 1
                continue
            if not running[index].done:
                self._count("cancelled")
            last = len(running) - 1
            if index != last:
                moved = running[last]
                self.cache.move(last, index, moved.length)
                running[index] = moved
            with self._cond:
                running.pop()
