"""Text in, embeddings out: the tokenizer and ONNX Runtime call a text-embedding replica runs.

A registered text-embedding version is an ONNX graph that takes ``input_ids`` and
``attention_mask`` (int64, dynamic batch and sequence axes) and returns ``embedding``, plus
the tokenizer as one ``tokenizer.json`` file (Hugging Face ``tokenizers`` format, with the
model's truncation length and pad-to-longest built in). Served, the version takes a BYTES
input ``text`` (one string per row) and answers ``embedding`` (FP32, one row per text) and
``tokens`` (INT64, the tokens each text counted, after truncation: what usage reports).

Only ``tokenizers`` and numpy are needed here; building a version (export, quantization,
parity) is :mod:`maas.pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KIND = "text-embedding"  # the registry's ``kind`` tag of these versions
TOKENIZER_FILE = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask")  # of the ONNX graph
OUTPUT_NAME = "embedding"
TEXT_INPUT = "text"  # of the served signature
TOKENS_OUTPUT = "tokens"


@dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray  # int64 [texts, longest]
    attention_mask: np.ndarray  # int64 [texts, longest]

    @property
    def tokens(self) -> np.ndarray:
        """Tokens per text (special tokens included, padding not)."""
        return self.attention_mask.sum(axis=1)


class TextEncoder:
    """A fast (Rust) tokenizer that truncates to the model's length and pads each batch to
    its longest text, never to the maximum: a batch of short texts stays short."""

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        if self._tokenizer.padding is None or self._tokenizer.padding.get("length") is not None:
            raise ValueError("tokenizer.json must pad to the longest text of a batch "
                             "(maas.pretrained.tokenizer_json writes it so)")

    @property
    def max_length(self) -> int | None:
        truncation = self._tokenizer.truncation
        return None if truncation is None else int(truncation["max_length"])

    def encode(self, texts: list[str]) -> Encoded:
        encodings = self._tokenizer.encode_batch(texts)
        return Encoded(np.array([e.ids for e in encodings], dtype=np.int64),
                       np.array([e.attention_mask for e in encodings], dtype=np.int64))


def embed(session, encoder: TextEncoder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [texts, dim] float32, tokens per text int64) from an ONNX Runtime session
    of an exported embedder."""
    if not texts:
        return np.zeros((0, session.get_outputs()[0].shape[-1]), np.float32), \
            np.zeros(0, np.int64)
    encoded = encoder.encode(texts)
    feeds = {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}
    return session.run([OUTPUT_NAME], feeds)[0], encoded.tokens
