"""ONNX Runtime sessions as maas runs them: CPU, explicit thread counts.

Kept apart from :mod:`maas.export` so that a serving replica, which only runs models, never
imports torch (hundreds of MB per replica process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ort_session(model: Path | bytes, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session, from a file or in-memory bytes, with explicit thread counts
    (no oversubscription: replicas and training workers share the cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options,
                                providers=["CPUExecutionProvider"])
