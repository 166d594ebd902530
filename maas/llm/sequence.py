"""What the engine keeps of each sequence, and what it hands out: its outputs, its stats, the
grammar protocol a constrained sequence follows. Plain data, apart from the scheduling in
:mod:`maas.llm.engine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from maas.errors import MaasError
from maas.llm.detok import TextStream
from maas.llm.sampling import Sampler, SamplingParams, TokenLogprob


class ContextOverflow(MaasError):
    """Prompt plus completion would not fit the sequence's context."""

    status = 400


def check_fits(prompt_tokens: int, max_tokens: int, context_length: int) -> None:
    """ContextOverflow (400, naming both numbers) unless prompt + max_tokens fit the context."""
    if prompt_tokens + max_tokens > context_length:
        raise ContextOverflow(
            f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: together "
            f"{prompt_tokens + max_tokens}, over this model's context length of "
            f"{context_length} tokens; shorten the prompt or lower max_tokens",
            param="max_tokens")


class Constraint(Protocol):
    """A grammar a sequence's tokens must follow (``maas.llm.guidance``)."""

    def mask_logits(self, logits: np.ndarray) -> None: ...
    def accept(self, token_id: int) -> None: ...
    @property
    def is_finished(self) -> bool: ...


@dataclass(frozen=True)
class StepOutput:
    """What one sequence produced in one engine turn."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...]
    finish_reason: str | None  # "stop", "length", "error" or None while running
    prompt_tokens: int
    completion_tokens: int
    first_step: int = -1  # decode steps this sequence took part in (batch-mates overlap)
    last_step: int = -1


@dataclass
class Sequence:
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[StepOutput], None]
    constraint: Constraint | None
    sampler: Sampler
    text: TextStream
    cancelled: bool = False
    done: bool = False  # its finish reason was sent (else it was cancelled by its client)
    length: int = 0  # tokens in the cache
    last: int = -1  # the newest token, not yet in the cache
    generated: int = 0
    first_step: int = -1
    last_step: int = -1
    slot: int = -1  # while its prompt goes in by chunks: the slot it fills


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    cache_tokens: int  # positions held by running sequences
    cache_capacity: int
    steps: int
    finished: dict[str, int] = field(default_factory=dict)
