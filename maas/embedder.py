"""A pretrained embedder made servable: its variants measured against sentence-transformers
on a fixed sentence set, tokenized exactly as the replica will, and one chosen.

    python -m jobs.pipeline deploy.yaml     # a model with `source: pretrained` comes here

The fp32 export must match the reference (``pretrained.parity_cosine``), or nothing is
registered; each ``optimize.variants`` entry is measured the same way, and the one
``optimize.select`` picks among those at ``pretrained.min_cosine`` or better is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maas.config import OptimizeConfig, PretrainedConfig
from maas.pretrained import (PretrainedError, export, fingerprint, max_length, offline, pooling,
                             quantize, require_text_extra, resolve, tokenizer_json)
from maas.runtime import ort_session
from maas.text import TextEncoder, embed
from maas.variants import p50_ms, pick

# The parity set: short and long, questions, other languages, digits, emoji, empty, and one
# past the truncation length, so every path of the tokenizer and the pooling is compared.
REFERENCE_SENTENCES = (
    "hello", "ok", "What is the capital of France?", "The cat sits on the mat.",
    "Ray Serve scales ONNX Runtime replicas behind one HTTP ingress.",
    "Quantization trades a little accuracy for speed and size, and the trade is measured.",
    "A model registry keeps versions, aliases and the lineage of every artifact it holds.",
    "Data-parallel training spreads batches over workers and averages their gradients.",
    "The weather is lovely today, isn't it?", "Le chat est sur le tapis.",
    "Der schnelle braune Fuchs springt über den faulen Hund.", "1234 5678",
    "émoji 🚀 and accents: naïve café", "",
    "Search engines rank documents by how close their embeddings lie to the query's.",
    "Please reset my password; I cannot log in since yesterday.",
    " ".join(["long"] * 300),
)
LATENCY_CALLS = {1: 30, 32: 8}  # timed calls per batch size; a 32-sentence call takes ~50 ms


def reference_embeddings(model_dir: Path, sentences: list[str], length: int) -> np.ndarray:
    """sentence-transformers' own embeddings of ``sentences`` (the parity reference)."""
    offline()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = length
    return model.encode(list(sentences), normalize_embeddings=pooling(model_dir).normalize,
                        convert_to_numpy=True)


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (zero rows count as 0)."""
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    return (got * want).sum(axis=1) / np.where(norms == 0, 1.0, norms)


@dataclass(frozen=True)
class TextVariant:
    """One ONNX file of the embedder, measured against the reference."""

    name: str  # "fp32" or an optimize variant name
    path: Path
    size_bytes: int
    min_cosine: float
    mean_cosine: float
    p50_ms: dict[int, float]  # batch size (sentences per call) -> median latency

    def metrics(self) -> dict[str, float]:
        return {"min_cosine": self.min_cosine, "mean_cosine": self.mean_cosine,
                "size_bytes": float(self.size_bytes),
                **{f"p50_ms_b{b}": ms for b, ms in self.p50_ms.items()}}

    def cells(self) -> dict[str, str]:
        """The variants table's columns for this variant."""
        return {"min cosine": f"{self.min_cosine:.4f}", "mean cosine": f"{self.mean_cosine:.5f}",
                "size MB": f"{self.size_bytes / 2**20:.1f}",
                "p50 ms b=1": f"{self.p50_ms[1]:.1f}", "p50 ms b=32": f"{self.p50_ms[32]:.1f}"}


def measure(name: str, path: Path, encoder: TextEncoder, reference: np.ndarray,
            sentences: list[str], threads: int = 1) -> TextVariant:
    """Cosine of ``path``'s embeddings with ``reference`` (tokenized as the replica does) and
    its median latency at 1 and 32 sentences per call, on ``threads`` intra-op threads."""
    session = ort_session(path, threads=threads)
    got, _ = embed(session, encoder, list(sentences))
    scores = cosines(got, reference)
    # Typical lengths for timing: the text past the truncation length would pad all 32 rows
    # to 256 tokens (measured 2.7 s a call, against 50 ms).
    typical = [s for s in sentences if len(s) < 200]
    batch = (typical * (32 // len(typical) + 1))[:32]
    p50 = {size: p50_ms({name: lambda texts=batch[:size]: embed(session, encoder, texts)},
                        runs=calls, warmup=1)[name]
           for size, calls in LATENCY_CALLS.items()}
    return TextVariant(name, path, path.stat().st_size, float(scores.min()),
                       float(scores.mean()), p50)


@dataclass(frozen=True)
class Built:
    """A pretrained embedder made servable: every variant measured, one chosen."""

    model_dir: Path
    fingerprint: str  # of the model directory: what the versions were made from
    max_length: int
    tokenizer: str  # tokenizer.json text, as the replica loads it
    dimension: int
    sentences: list[str]  # the parity set
    reference: np.ndarray  # sentence-transformers' embeddings of it
    variants: list[TextVariant]
    chosen: TextVariant


def choose(variants: list[TextVariant], min_cosine: float, policy: str) -> TextVariant:
    """The variant to register: among those at ``min_cosine`` or better, the fastest at 32
    sentences per call, or the smallest."""
    chosen = pick(variants, policy, lambda v: v.min_cosine >= min_cosine, lambda v: v.p50_ms[32])
    if chosen is None:
        shown = ", ".join(f"{v.name} {v.min_cosine:.4f}" for v in variants)
        raise PretrainedError(f"no variant reaches pretrained.min_cosine {min_cosine} ({shown}); "
                              f"lower it, or drop the lossy variants")
    return chosen


def build(cfg: PretrainedConfig, optimize: OptimizeConfig, opset: int, folder: Path,
          threads: int = 1) -> Built:
    """Export ``cfg.model`` into ``folder``, refuse it unless fp32 matches sentence-transformers
    to ``cfg.parity_cosine``, build and measure the configured variants, choose one."""
    require_text_extra()
    model_dir = resolve(cfg.model)
    length = max_length(model_dir, cfg.max_length)
    tokenizer = tokenizer_json(model_dir, length)
    encoder = TextEncoder(tokenizer)
    sentences = list(REFERENCE_SENTENCES)
    reference = reference_embeddings(model_dir, sentences, length)
    fp32 = export(model_dir, encoder, folder / "fp32.onnx", opset)
    variants = [measure("fp32", fp32, encoder, reference, sentences, threads)]
    if variants[0].min_cosine < cfg.parity_cosine:
        raise PretrainedError(
            f"{cfg.model}: the ONNX export's embeddings have cosine {variants[0].min_cosine:.5f} "
            f"with sentence-transformers' (pretrained.parity_cosine {cfg.parity_cosine}); the "
            f"export does not compute what the model does, so nothing is registered")
    if "int8_dynamic" in optimize.variants:
        int8 = quantize(fp32, folder / "int8_dynamic.onnx")
        variants.append(measure("int8_dynamic", int8, encoder, reference, sentences, threads))
    return Built(model_dir, fingerprint(model_dir), length, tokenizer, int(reference.shape[1]),
                 sentences, reference, variants,
                 choose(variants, cfg.min_cosine, optimize.select.policy))
