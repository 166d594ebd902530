"""ONNX Runtime sessions as maas runs them: CPU, explicit thread counts.

Kept apart from :mod:`maas.export` so that a serving replica, which only runs models, never
imports torch (hundreds of MB per replica process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ort_session(model: Path | bytes, threads: int = 1, spin: bool = False) -> Any:
    """An ONNX Runtime CPU session, from a file or in-memory bytes, with explicit thread counts
    (no oversubscription: replicas and training workers share the cores).

    ``spin``: let the intra-op threads spin-wait between runs (ONNX Runtime's default). Off
    unless asked for: a spinning pool keeps every one of its threads on a core between
    decode steps, whatever CPUs Ray reserved for the replica, and on shared cores that starves
    the processes around it. Measured with an LLM replica spinning on 2 busy cores: its
    tokens left the replica on time, yet the HTTP client read the whole 160-token stream at
    its end, 1 s after the first token was sent; with spinning off the client read each token
    within milliseconds (bench/RESULTS.md has the figures and what spinning buys on idle
    cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options,
                                providers=["CPUExecutionProvider"])
