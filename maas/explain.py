"""Per-feature attributions of a model's output: Integrated Gradients, computed with the
model's own forward pass (ONNX Runtime in a replica), so they explain the version that is
served, quantized or not, without its training code.

Integrated Gradients (Sundararajan et al., 2017) attributes ``f(x) - f(baseline)`` to the
input features by integrating the gradient along the straight path from the baseline to x.
An ONNX model has no gradient at run time, so the integral is taken as the path's own
differences: the path is cut into ``steps`` segments and each segment is walked one
coordinate at a time (a fresh random order per segment). A feature's attribution is the sum
of the output's changes while that feature moved. The changes telescope, so the
attributions add up to ``f(x) - f(baseline)`` (completeness) however few the steps; as the
steps grow, each change tends to the gradient times the segment, i.e. to Integrated
Gradients itself (the discrete Aumann-Shapley path value). Differences over whole segments
rather than tiny central differences also keep it meaningful on int8 models, whose output is
a step function at the scale of a finite-difference epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from pydantic import Field

from maas.config.base import StrictModel

METHOD = "integrated_gradients"
# Forward rows per request (rows x steps x (features + 1)): the work and the memory of one
# explanation are bounded before any is done (64 MiB of float32 points at 64 features).
MAX_EVALUATIONS = 262_144
CHUNK_ROWS = 16_384  # rows per forward call


class ExplainParameters(StrictModel):
    """The request's ``parameters`` for ``/explain``."""

    method: str = Field(METHOD, pattern=f"^{METHOD}$",
                        description="the attribution method; only integrated_gradients")
    target: int | None = Field(None, ge=0, description="the output column to explain (a "
                                                        "class); unset: each row's top one")
    output: str | None = Field(None, description="the output tensor to explain; unset: the "
                                                 "model's first (probabilities, prediction)")
    baseline: float | list[float] = Field(
        0.0, description="the reference input: one value for every feature (0: a blank "
                         "digit), or one per feature")
    steps: int = Field(64, ge=1, le=1024, description="path segments: more is closer to "
                                                      "the gradient integral, and slower")
    seed: int = Field(0, ge=0, description="seeds each segment's coordinate order")


@dataclass(frozen=True)
class Attribution:
    """Attributions of ``rows`` inputs: one per feature, in the output's units."""

    attributions: np.ndarray  # (rows, features)
    target: np.ndarray  # (rows,) the explained output column
    score: np.ndarray  # (rows,) f(x)[target]
    baseline_score: np.ndarray  # (rows,) f(baseline)[target]

    @property
    def delta(self) -> np.ndarray:
        """Completeness error per row: sum of attributions - (score - baseline score)."""
        return self.attributions.sum(axis=1) - (self.score - self.baseline_score)


def evaluations(rows: int, features: int, steps: int) -> int:
    """Forward rows one explanation takes."""
    return rows * steps * (features + 1)


def _path_points(x: np.ndarray, baseline: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """(rows, steps, features + 1, features): segment k's start, then one more coordinate
    (in ``orders[k]``) moved to the segment's end at a time."""
    steps, features = orders.shape
    delta = (x - baseline) / steps
    start = baseline + np.arange(steps)[None, :, None] * delta[:, None, :]
    rank = np.argsort(orders, axis=1)  # rank[k, feature]: its place in orders[k]
    moved = (rank[:, None, :] < np.arange(features + 1)[None, :, None]).astype(np.float64)
    return start[:, :, None, :] + moved[None] * delta[:, None, None, :]


def integrated_gradients(forward: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                         params: ExplainParameters) -> Attribution:
    """Attributions of ``forward``'s output (a (n, features) float32 batch -> (n, outputs)
    or (n,)) for the rows ``x``; raises ValueError naming the parameter that does not fit."""
    rows, features = x.shape
    if np.ndim(params.baseline) and len(params.baseline) != features:
        raise ValueError(f"parameters.baseline: {len(params.baseline)} values for a model of "
                         f"{features} features")
    baseline = np.broadcast_to(np.asarray(params.baseline, dtype=np.float64), (features,))
    if evaluations(rows, features, params.steps) > MAX_EVALUATIONS:
        raise ValueError(f"parameters.steps: {rows} rows x {params.steps} steps x "
                         f"{features + 1} is over {MAX_EVALUATIONS:,} model evaluations; ask "
                         f"for fewer rows or steps")
    rng = np.random.default_rng(params.seed)
    orders = np.stack([rng.permutation(features) for _ in range(params.steps)])
    points = _path_points(x.astype(np.float64), baseline[None, :], orders)
    flat = points.reshape(-1, features).astype(np.float32)
    out = np.concatenate([np.asarray(forward(flat[i:i + CHUNK_ROWS]))
                          for i in range(0, len(flat), CHUNK_ROWS)])
    out = out.reshape(rows, params.steps, features + 1, -1).astype(np.float64)
    columns = out.shape[-1]
    if params.target is not None and params.target >= columns:
        raise ValueError(f"parameters.target: {params.target} is not an output column "
                         f"(the output has {columns})")
    last = out[:, -1, -1, :]  # the path's end: x itself
    target = (np.full(rows, params.target) if params.target is not None
              else last.argmax(axis=1))
    path = out[np.arange(rows), :, :, target]  # (rows, steps, features + 1)
    changes = np.diff(path, axis=2)  # (rows, steps, features): as order[k][j] moved
    attributions = np.zeros((rows, features), dtype=np.float64)
    for k, order in enumerate(orders):
        attributions[:, order] += changes[:, k, :]
    return Attribution(attributions=attributions, target=target.astype(np.int64),
                       score=path[:, -1, -1], baseline_score=path[:, 0, 0])
