"""What every optimizer's variants share: how they are timed, how one is picked, and the one
table they are shown in (maas.optimize for a trained model, maas.embedder for a pretrained
embedder), so that their figures compare alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol, TypeVar

import numpy as np
from rich import box
from rich.table import Table


class MeasuredVariant(Protocol):
    """A variant as every optimizer measures it (maas.optimize, maas.embedder)."""

    name: str
    size_bytes: int

    def cells(self) -> dict[str, str]:
        """Its measures, formatted, by column title."""

    def metrics(self) -> dict[str, float]:
        """Its measures as numbers, for MLflow."""


ROUNDS = 10


def p50_ms(calls: Mapping[str, Callable[[], object]], runs: int,
           warmup: int | None = None) -> dict[str, float]:
    """Median milliseconds of each call over ``runs`` timed calls, after ``warmup`` untimed
    ones (default: a tenth of ``runs``, at least 5). Calls are timed in interleaved rounds,
    so drift in the machine's speed (other processes, clocks) lands on every call alike."""
    for call in calls.values():
        for _ in range(max(runs // 10, 5) if warmup is None else warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    per_round = max(runs // ROUNDS, 1)
    for _ in range(ROUNDS):
        for name, call in calls.items():
            for _ in range(per_round):
                started = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - started)
    return {name: float(np.median(s) * 1000.0) for name, s in samples.items()}


V = TypeVar("V", bound=MeasuredVariant)


def pick(variants: Sequence[V], policy: Literal["fastest", "smallest"],
         eligible: Callable[[V], bool], latency: Callable[[V], float]) -> V | None:
    """Among the ``eligible`` variants, the one with the least ``latency`` (``fastest``) or
    the fewest bytes (``smallest``); None when none is eligible."""
    candidates = [v for v in variants if eligible(v)]
    if not candidates:
        return None
    return min(candidates, key=(lambda v: v.size_bytes) if policy == "smallest" else latency)


def variants_table(title: str, variants: Sequence[MeasuredVariant], chosen: str,
                   eligible: Callable[[MeasuredVariant], bool]) -> Table:
    """One row per variant with its measures, the chosen one marked, the ineligible ones
    marked too lossy."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
                  show_edge=False)
    table.add_column("variant")
    columns = list(variants[0].cells()) if variants else []
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("")
    for v in variants:
        verdict = "selected" if v.name == chosen else ("" if eligible(v) else "too lossy")
        cells = v.cells()
        table.add_row(v.name, *(cells[c] for c in columns), verdict)
    return table
