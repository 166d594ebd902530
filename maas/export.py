"""Export a trained classifier to ONNX and prove ONNX Runtime computes what torch computes.

The graph has one input ``input`` (FP32, [-1, n_features]) and two outputs: ``probabilities``
(FP32, [-1, n_classes]) and ``label`` (INT64, [-1]). The batch axis is dynamic.
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

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAMES = ("probabilities", "label")


@dataclass(frozen=True)
class ParityReport:
    """How far ONNX Runtime's outputs are from torch's on the same rows."""

    rows: int
    max_abs_diff: float
    label_agreement: float
    onnx_accuracy: float

    def ok(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.label_agreement == 1.0


def export_onnx(model: nn.Module, n_features: int, path: Path, cfg: ExportConfig) -> Path:
    """Write ``Classifier(model)`` as ONNX to ``path`` (one self-contained file) and check it."""
    import onnx

    wrapped = Classifier(model).eval()
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
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                opset_version=cfg.opset,
                external_data=False,
                verbose=False,
            )
    finally:
        registration_log.setLevel(previous_level)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def ort_session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session with explicit thread counts (no oversubscription)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_parity(model: nn.Module, onnx_path: Path, x: np.ndarray, y: np.ndarray) -> ParityReport:
    """Run torch and ONNX Runtime on the same held-out rows and compare outputs."""
    wrapped = Classifier(model).eval()
    torch_probs, torch_labels = (t.numpy() for t in wrapped(torch.from_numpy(x)))
    ort_probs, ort_labels = ort_session(onnx_path).run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    return ParityReport(
        rows=len(x),
        max_abs_diff=float(np.max(np.abs(torch_probs - ort_probs))),
        label_agreement=float(np.mean(torch_labels == ort_labels)),
        onnx_accuracy=float(np.mean(ort_labels == y)),
    )
