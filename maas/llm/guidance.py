"""Structured output: OpenAI's ``response_format`` turned into a token mask, by llguidance.

``{"type": "json_object"}`` and ``{"type": "json_schema", "json_schema": {"name": ...,
"schema": {...}}}`` must yield text that parses (and validates), so the engine constrains
decoding rather than retrying: before each sampling step a sequence's :class:`Matcher` sets
every token the grammar cannot take next to -inf, and after it consumes the token drawn. EOS
stays masked until the JSON is complete; once nothing but EOS can follow, ``is_finished``
says so and the engine ends the sequence with finish reason "stop".

llguidance (the library vLLM and onnxruntime-genai use) does the grammar work in Rust: one
:class:`Guidance` per model holds its tokenizer and an LRU of compiled grammars; each
sequence gets a cheap copy of a compiled grammar's matcher. llguidance is imported on first
use, so this module imports without it (``pip install 'maas[llm]'``)::

    guidance = Guidance(Path("model/tokenizer.json"), eos_token_ids=2)
    grammar = guidance.compile({"type": "json_object"})   # None for {"type": "text"}
    matcher = guidance.matcher(grammar)
    matcher.mask_logits(logits); token = sample(logits); matcher.accept(token)
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from maas.errors import MaasError

if TYPE_CHECKING:
    import tokenizers

log = logging.getLogger(__name__)

FORMAT_TYPES = ("text", "json_object", "json_schema")
JSON_SCHEMA_KEYS = ("name", "description", "schema", "strict")
NAME_PATTERN = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's rule for json_schema.name
# A schema is compiled per request and cached; 64 KiB holds the largest hand-written schemas
# while keeping the cache (GRAMMAR_CACHE entries) to a few MB.
MAX_SCHEMA_CHARS = 65_536
GRAMMAR_CACHE = 64
# llguidance's default whitespace is any run of [ \n\r\t]; a small model can then emit
# newlines until max_tokens. One run of up to 24 keeps pretty-printed JSON (indent at depth 10)
# legal and bounds what a whitespace loop can cost between two JSON tokens.
WHITESPACE = {"whitespace_pattern": r"[\x20\x0A\x0D\x09]{1,24}"}


class ResponseFormatError(MaasError, ValueError):
    """A ``response_format`` that cannot be honoured; the message names the field and fix."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message, param="response_format")


class GuidanceError(MaasError):
    """Constrained decoding broke: llguidance missing, or a token outside the mask accepted."""

    status = 500


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.numpy
    except ImportError:
        raise GuidanceError("response_format needs llguidance, which is not installed: "
                            "pip install 'maas[llm]'") from None
    return llguidance


@dataclass(frozen=True)
class Grammar:
    """A compiled response format: its cache key (the schema as sent) and a matcher at the
    start, which every sequence copies."""

    key: str
    template: Any  # llguidance.LLMatcher, never advanced


class Guidance:
    """Grammars for one model's tokenizer; build once per process (~0.25 s for 49k tokens).

    ``tokenizer`` is the path of a Hugging Face ``tokenizer.json`` or a loaded
    ``tokenizers.Tokenizer``; ``eos_token_ids`` are the tokens that end a sequence, allowed
    only where the grammar is complete; ``vocab_size`` overrides the tokenizer's when the
    model's logits row is longer (padded embeddings)."""

    def __init__(self, tokenizer: str | os.PathLike[str] | tokenizers.Tokenizer,
                 eos_token_ids: int | Sequence[int], vocab_size: int | None = None):
        llg = _llguidance()
        text = (Path(tokenizer).read_text() if isinstance(tokenizer, (str, os.PathLike))
                else tokenizer.to_str())
        eos = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
        self.tokenizer = llg.LLTokenizer(text, n_vocab=vocab_size, eos_token=eos)
        self.vocab_size: int = self.tokenizer.vocab_size
        # verbose_errors off: llguidance's errors would otherwise quote parser state and the
        # whole grammar, which reach clients in a 400 and logs.
        self._limits = llg.LLParserLimits(verbose_errors=False)
        self._cache: OrderedDict[str, Grammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, response_format: Mapping[str, Any] | BaseModel | None) -> Grammar | None:
        """The grammar ``response_format`` asks for; None when it asks for none ("text")."""
        schema = _schema_of(response_format)
        if schema is None:
            return None
        # Not sort_keys: llguidance emits properties in the schema's order, so order matters.
        key = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        if len(key) > MAX_SCHEMA_CHARS:
            raise ResponseFormatError(
                f"response_format.json_schema.schema: {len(key)} characters, over the "
                f"{MAX_SCHEMA_CHARS} this server compiles; send a smaller schema")
        with self._lock:
            if (grammar := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
                return grammar
        grammar = Grammar(key=key, template=self._template(schema))
        with self._lock:
            self._cache[key] = grammar
            while len(self._cache) > GRAMMAR_CACHE:
                self._cache.popitem(last=False)
        return grammar

    def _template(self, schema: dict[str, Any]) -> Any:
        llg = _llguidance()
        try:
            text = llg.LLMatcher.grammar_from_json_schema(schema, overrides=WHITESPACE)
        except ValueError as exc:
            raise ResponseFormatError(f"response_format.json_schema.schema: {exc}") from None
        # The matcher never raises on a bad grammar: it starts in an error state instead.
        template = llg.LLMatcher(self.tokenizer, text, log_level=0, limits=self._limits)
        if template.is_error():
            raise ResponseFormatError(
                f"response_format.json_schema.schema is not supported: {template.get_error()}; "
                "see https://github.com/guidance-ai/llguidance/blob/main/docs/json_schema.md")
        for warning in template.get_grammar_warnings():
            log.warning("response_format schema: %s", warning)
        return template

    def matcher(self, grammar: Grammar) -> Matcher:
        """A fresh matcher for one sequence (a copy of the grammar's: ~3 µs)."""
        return Matcher(grammar.template.deep_copy(), self.vocab_size)


class Matcher:
    """One sequence's place in its grammar: masks each step's logits, consumes each token."""

    def __init__(self, matcher: Any, vocab_size: int):
        self._matcher = matcher
        self._vocab_size = vocab_size
        llg = _llguidance()
        self._fill = llg.numpy.fill_next_token_bitmask
        self._bitmask = llg.numpy.allocate_token_bitmask(1, vocab_size)

    def mask_logits(self, logits: np.ndarray) -> None:
        """Set ``logits`` [vocab] to -inf, in place, wherever the grammar forbids the token.

        Measured on SmolLM2's 49,152 tokens: p50 40-60 µs (llguidance's mask ~12 µs, applying
        it ~27 µs), p99 ~250 µs: ~1 ms of a 30 ms decode step for a batch of 16."""
        if self._matcher.is_error():
            raise GuidanceError(f"constrained decoding failed: {self._matcher.get_error()}")
        if logits.ndim != 1 or logits.shape[0] < self._vocab_size:
            raise GuidanceError(f"logits must be one row of at least {self._vocab_size} "
                                f"(the tokenizer's vocabulary), got shape {logits.shape}")
        self._fill(self._matcher, self._bitmask)
        # Bit i of the int32 words (little-endian) is token i.
        allowed = np.unpackbits(self._bitmask.view(np.uint8), count=self._vocab_size,
                                bitorder="little")
        np.copyto(logits[:self._vocab_size], -np.inf, where=allowed == 0)
        logits[self._vocab_size:] = -np.inf

    def accept(self, token_id: int) -> None:
        """Advance past ``token_id`` (EOS included); one the mask forbade is an error."""
        if not self._matcher.consume_token(int(token_id)):
            raise GuidanceError(f"token {token_id} does not follow the response_format "
                                f"grammar: {self._matcher.get_error()}; sample from the logits "
                                "mask_logits masked")

    @property
    def is_finished(self) -> bool:
        """True once the grammar is complete and nothing but EOS can follow."""
        return self._matcher.is_stopped()


def _schema_of(response_format: Mapping[str, Any] | BaseModel | None) -> dict[str, Any] | None:
    """The JSON schema ``response_format`` asks for, or None for plain text."""
    if response_format is None:
        return None
    if isinstance(response_format, BaseModel):
        response_format = response_format.model_dump(by_alias=True, exclude_none=True)
    if not isinstance(response_format, Mapping):
        raise ResponseFormatError(f"response_format: must be an object like "
                                  f'{{"type": "json_object"}}, got {response_format!r}')
    kind = response_format.get("type")
    if kind not in FORMAT_TYPES:
        raise ResponseFormatError(f"response_format.type: must be one of "
                                  f"{', '.join(map(repr, FORMAT_TYPES))}, got {kind!r}")
    extra = sorted(set(response_format) - {"type", kind})
    if extra:
        raise ResponseFormatError(f"response_format: unknown field(s) {extra} for type "
                                  f"{kind!r}; remove them")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    return _json_schema(response_format.get("json_schema"))


def _json_schema(spec: Any) -> dict[str, Any]:
    """The schema of a ``json_schema`` response format, its other fields checked."""
    if not isinstance(spec, Mapping):
        raise ResponseFormatError('response_format.json_schema: required with type '
                                  '"json_schema", an object like {"name": "answer", '
                                  f'"schema": {{...}}}}, got {spec!r}')
    extra = sorted(set(spec) - set(JSON_SCHEMA_KEYS))
    if extra:
        raise ResponseFormatError(f"response_format.json_schema: unknown field(s) {extra}; "
                                  f"allowed: {', '.join(JSON_SCHEMA_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ResponseFormatError("response_format.json_schema.name: required, 1-64 of "
                                  f"a-z, A-Z, 0-9, _ and -, got {name!r}")
    if not isinstance(spec.get("strict", False), bool):
        raise ResponseFormatError("response_format.json_schema.strict: must be true or "
                                  f"false, got {spec['strict']!r}")
    schema = spec.get("schema")
    if not isinstance(schema, Mapping):
        raise ResponseFormatError("response_format.json_schema.schema: required, a JSON "
                                  f"Schema object, got {schema!r}")
    return dict(schema)
