"""Chat fine-tuning data in OpenAI's JSONL format, read and checked line by line.

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

One example per line. Every line is validated; the first bad one fails the whole file with a
400 that names its line number and field (``line 7: messages[2].role: ...``), so a tenant
fixes the file before any worker starts. An assistant message may carry ``"weight": 0`` to
leave it out of the loss, as OpenAI's format allows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from maas.config.base import StrictModel
from maas.errors import MaasError, field_path

MAX_LINE_BYTES = 64 * 1024


class FinetuneDataError(MaasError, ValueError):
    """Training data that cannot be used; the message names the line and the field."""

    status = 400


class Message(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)
    weight: Literal[0, 1] | None = Field(
        None, description="assistant messages only: 0 leaves it out of the loss")


class ChatExample(StrictModel):
    """One training conversation: what the model learns are its assistant messages."""

    messages: list[Message] = Field(min_length=2, max_length=64)

    @field_validator("messages")
    @classmethod
    def _has_an_answer(cls, messages: list[Message]) -> list[Message]:
        trained = [m for m in messages if m.role == "assistant" and m.weight != 0]
        if not trained:
            raise ValueError("needs at least one assistant message to learn from (one without "
                             "weight 0)")
        for index, message in enumerate(messages):
            if message.weight is not None and message.role != "assistant":
                raise ValueError(f"[{index}].weight: only assistant messages carry a weight")
        return messages

    def line(self) -> str:
        return self.model_dump_json(exclude_none=True)


@dataclass(frozen=True)
class ChatData:
    """A validated file: its examples, and its sha256 and row count for the lineage tags."""

    examples: list[ChatExample]
    sha256: str

    @property
    def rows(self) -> int:
        return len(self.examples)


def _error(number: int, exc: ValidationError, param: str) -> FinetuneDataError:
    first = exc.errors()[0]
    where = field_path([str(p) if not isinstance(p, int) else p for p in first["loc"]])
    message = first["msg"].removeprefix("Value error, ")
    if message.startswith("["):  # a validator's own index into messages
        where, _, message = (where + message).partition(": ")
    return FinetuneDataError(f"line {number}: {where or 'the line'}: {message}", param=param)


def parse_jsonl(raw: bytes, max_rows: int = 100_000, min_rows: int = 1,
                param: str = "training_file") -> ChatData:
    """Every line of ``raw`` as a :class:`ChatExample` (blank lines skipped); a
    :class:`FinetuneDataError` naming the first bad line otherwise (``param``: the request
    field the file came in)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FinetuneDataError(f"the file is not UTF-8 text (byte {exc.start})",
                                param=param) from None
    examples: list[ChatExample] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line.encode()) > MAX_LINE_BYTES:
            raise FinetuneDataError(f"line {number}: longer than {MAX_LINE_BYTES} bytes",
                                    param=param)
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FinetuneDataError(f"line {number}: not JSON ({exc.msg} at column "
                                    f"{exc.colno})", param=param) from None
        if not isinstance(value, dict):
            raise FinetuneDataError(f"line {number}: must be a JSON object with 'messages', "
                                    f"got {type(value).__name__}", param=param)
        try:
            examples.append(ChatExample.model_validate(value))
        except ValidationError as exc:
            raise _error(number, exc, param) from None
        if len(examples) > max_rows:
            raise FinetuneDataError(f"more than {max_rows} examples; split the file",
                                    param=param)
    if len(examples) < min_rows:
        raise FinetuneDataError(f"{len(examples)} examples: at least {min_rows} are needed",
                                param=param)
    return ChatData(examples=examples, sha256=hashlib.sha256(raw).hexdigest())


def read_jsonl(path: Path, max_rows: int = 100_000, min_rows: int = 1) -> ChatData:
    if not path.is_file():
        raise FinetuneDataError(f"{path}: no such file; give a JSONL file of chat examples")
    return parse_jsonl(path.read_bytes(), max_rows, min_rows)


def write_jsonl(path: Path, examples: Iterable[ChatExample]) -> Path:
    """One example per line, written beside ``path`` and renamed into place."""
    body = "".join(example.line() + "\n" for example in examples)
    return write_bytes(path, body.encode("utf-8"))


def write_bytes(path: Path, content: bytes) -> Path:
    """``content`` written beside ``path`` (readable by its owner only), flushed to disk and
    renamed into place: a reader sees the whole file or none."""
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path
