"""Export a trained model to ONNX and prove ONNX Runtime computes what torch computes.

The graph has one input ``input`` (FP32, [-1, n_features]). A classifier has two outputs,
``probabilities`` (FP32, [-1, n_classes]) and ``label`` (INT64, [-1]); a regressor has one,
``prediction`` (FP32). The batch axis is dynamic.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maas.config import ExportConfig
from maas.models import Classifier
from maas.runtime import ort_session

log = logging.getLogger(__name__)

INPUT_NAME = "input"
CLASSIFIER_OUTPUTS = ("probabilities", "label")
REGRESSOR_OUTPUTS = ("prediction",)


class Regressor(nn.Module):
    """The exported form of a regression network: its output, named ``prediction``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def serving_form(model: nn.Module, task: str) -> tuple[nn.Module, tuple[str, ...]]:
    """The module that is exported and served for ``task``, and its output names."""
    if task == "classification":
        return Classifier(model).eval(), CLASSIFIER_OUTPUTS
    return Regressor(model).eval(), REGRESSOR_OUTPUTS


@dataclass(frozen=True)
class ParityReport:
    """How far ONNX Runtime's outputs are from torch's on the same rows."""

    rows: int
    max_abs_diff: float
    label_agreement: float | None  # classifiers only
    onnx_accuracy: float | None  # classifiers only

    def ok(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.label_agreement in (None, 1.0)


def export_onnx(model: nn.Module, n_features: int, path: Path, cfg: ExportConfig,
                task: str = "classification") -> Path:
    """Write the serving form of ``model`` as ONNX to ``path`` (one file) and check it."""
    import onnx

    wrapped, output_names = serving_form(model, task)
    example = (torch.zeros(2, n_features, dtype=torch.float32),)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter warns about optional torchvision ops that this graph never uses.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    previous_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                example,
                str(path),
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                opset_version=cfg.opset,
                external_data=False,
                verbose=False,
            )
    finally:
        registration_log.setLevel(previous_level)
    graph_model = compact_names(strip_debug_info(onnx.load(str(path))))
    onnx.checker.check_model(graph_model, full_check=True)
    onnx.save(graph_model, str(path))
    return path


def strip_debug_info(graph_model):
    """Drop what the exporter attaches for debugging: per-node stack traces (with this
    machine's source paths) and intermediate value_info. Runtime behaviour is unchanged; the
    digits MLP's file shrinks from 83 kB to 70 kB, which is what its weights take."""
    for node in graph_model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del graph_model.graph.value_info[:]
    return graph_model


def compact_names(graph_model):
    """Rename every initializer, intermediate tensor and node to a short generated name.

    Names do not change what the graph computes, but the exporter's and the quantizers'
    (``logits_model.net.4.weight_DequantizeLinear_Output``) are a tenth of an int8 digits model's
    file. The graph's input and output names are the serving signature and stay as they are.
    Graphs with subgraphs (If, Loop) are returned unchanged: their inner names would need the
    same mapping.
    """
    import itertools

    from onnx import AttributeProto

    graph = graph_model.graph
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS)
           for node in graph.node for a in node.attribute):
        return graph_model
    kept = {v.name for v in graph.input} | {v.name for v in graph.output}
    fresh = (f"t{i}" for i in itertools.count())
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in kept:
            return name
        if name not in mapping:
            mapping[name] = next(n for n in fresh if n not in kept)
        return mapping[name]

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    return graph_model


@torch.no_grad()
def check_parity(model: nn.Module, onnx_path: Path, x: np.ndarray, y: np.ndarray,
                 task: str = "classification") -> ParityReport:
    """Run torch and ONNX Runtime on the same held-out rows and compare every output."""
    wrapped, output_names = serving_form(model, task)
    torch_out = wrapped(torch.from_numpy(x))
    torch_out = [t.numpy() for t in (torch_out if isinstance(torch_out, tuple) else (torch_out,))]
    ort_out = ort_session(onnx_path).run(list(output_names), {INPUT_NAME: x})
    float_diffs = [np.max(np.abs(t - o)) for t, o in zip(torch_out, ort_out) if t.dtype.kind == "f"]
    if task != "classification":
        return ParityReport(len(x), float(max(float_diffs)), None, None)
    return ParityReport(
        rows=len(x),
        max_abs_diff=float(max(float_diffs)),
        label_agreement=float(np.mean(torch_out[1] == ort_out[1])),
        onnx_accuracy=float(np.mean(ort_out[1] == y)),
    )
