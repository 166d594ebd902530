"""Chat examples as token ids with a loss mask on the assistant's tokens only, in batches.

The conversation is rendered by the model's own chat template one turn at a time: the text up
to each assistant message (with the template's generation prompt) and the assistant's part
(its content and the template's end-of-turn marker) are tokenized separately, exactly as the
served engine tokenizes a prompt and then generates; so the model learns the tokens it will be
asked to produce, the end-of-turn marker included, and nothing of the prompt.

Batches are padded to their longest row (``padding``), or rows are packed end to end into
``max_length`` windows (``packing``: fewer pad tokens, but a row attends to the rows before it
in its window, as TRL's plain packing does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from maas.finetune.examples import ChatExample, FinetuneDataError

IGNORE = -100  # the label torch's cross-entropy skips


@dataclass(frozen=True)
class Encoded:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE where the token is not learnt

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def _render(tokenizer: Any, messages: list[dict[str, str]], prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def encode(example: ChatExample, tokenizer: Any, max_length: int) -> Encoded:
    """``example``'s tokens and labels; a row longer than ``max_length`` is an error (cutting
    it would train on a cut-off answer)."""
    ids: list[int] = []
    labels: list[int] = []
    history: list[dict[str, str]] = []
    done = ""  # the text already turned into ids
    for message in example.messages:
        if message.role == "assistant":
            before = _render(tokenizer, history, prompt=True)
            history.append({"role": "assistant", "content": message.content})
            after = _render(tokenizer, history, prompt=False)
            if not (before.startswith(done) and after.startswith(before)):
                raise FinetuneDataError("the model's chat template does not render a "
                                        "conversation as a growing text; it cannot be tuned "
                                        "turn by turn")
            prompt = tokenizer.encode(before[len(done):], add_special_tokens=False)
            answer = tokenizer.encode(after[len(before):], add_special_tokens=False)
            learnt = message.weight != 0
            ids += prompt + answer
            labels += [IGNORE] * len(prompt) + (answer if learnt else [IGNORE] * len(answer))
            done = after
        else:
            history.append({"role": message.role, "content": message.content})
    if len(ids) > max_length:
        raise FinetuneDataError(f"an example is {len(ids)} tokens, longer than max_length "
                                f"{max_length}; raise finetune.max_length or shorten it")
    return Encoded(tuple(ids), tuple(labels))


def encode_all(examples: Sequence[ChatExample], tokenizer: Any,
               max_length: int) -> list[Encoded]:
    encoded = []
    for number, example in enumerate(examples, start=1):
        try:
            encoded.append(encode(example, tokenizer, max_length))
        except FinetuneDataError as exc:
            raise FinetuneDataError(f"example {number}: {exc.message}",
                                    param="training_file") from None
    return encoded


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # [rows, width] int64
    attention_mask: np.ndarray
    labels: np.ndarray

    @property
    def trained_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def _pad(rows: Sequence[Encoded], pad_id: int) -> Batch:
    width = max(len(r.input_ids) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int64)
    labels = np.full((len(rows), width), IGNORE, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row.input_ids)] = row.input_ids
        labels[i, :len(row.labels)] = row.labels
        mask[i, :len(row.input_ids)] = 1
    return Batch(ids, mask, labels)


def pack(rows: Sequence[Encoded], max_length: int) -> list[Encoded]:
    """Rows concatenated in order into windows of at most ``max_length`` tokens."""
    windows: list[Encoded] = []
    ids: list[int] = []
    labels: list[int] = []
    for row in rows:
        if ids and len(ids) + len(row.input_ids) > max_length:
            windows.append(Encoded(tuple(ids), tuple(labels)))
            ids, labels = [], []
        ids += row.input_ids
        labels += row.labels
    if ids:
        windows.append(Encoded(tuple(ids), tuple(labels)))
    return windows


def batches(rows: Sequence[Encoded], batch_size: int, pad_id: int,
            order: np.ndarray | None = None,
            mode: Literal["padding", "packing"] = "padding",
            max_length: int = 0) -> Iterator[Batch]:
    """Batches of ``batch_size`` rows (the last may be smaller), in ``order`` when given."""
    chosen = [rows[i] for i in order] if order is not None else list(rows)
    if mode == "packing":
        chosen = pack(chosen, max_length)
    for start in range(0, len(chosen), batch_size):
        yield _pad(chosen[start:start + batch_size], pad_id)
