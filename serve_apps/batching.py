"""Concurrent infer requests answered by shared ONNX Runtime calls.

Serve's ``@serve.batch`` hands the replica a list of queued requests; requests for the same
version, outputs and row shape are concatenated into one call, and each gets its own rows
back. An output that is not one row per input row cannot be split, so its group runs one
request at a time.
"""

import asyncio
from typing import Protocol

import numpy as np

Feeds = dict[str, np.ndarray]


class Runnable(Protocol):
    def run(self, wanted: list[str], feeds: Feeds) -> list[np.ndarray]: ...


Item = tuple[Runnable, tuple[str, ...], Feeds]  # (loaded version, wanted outputs, inputs)


def _groups(items: list[Item]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, (loaded, wanted, feeds) in enumerate(items):
        shapes = tuple((k, v.shape[1:]) for k, v in sorted(feeds.items()))
        groups.setdefault((id(loaded), wanted, shapes), []).append(i)
    return list(groups.values())


async def run_together(items: list[Item]) -> list[list[np.ndarray]]:
    """Each item's outputs, computed with as few ONNX Runtime calls as the items allow (each
    call off the event loop)."""
    results: list[list[np.ndarray]] = [[] for _ in items]
    for members in _groups(items):
        loaded, wanted, first = items[members[0]]
        feeds = first if len(members) == 1 else {
            name: np.concatenate([items[i][2][name] for i in members]) for name in first}
        outputs = await asyncio.to_thread(loaded.run, list(wanted), feeds)
        rows = [len(next(iter(items[i][2].values()))) for i in members]
        if len(members) > 1 and any(o.ndim == 0 or len(o) != sum(rows) for o in outputs):
            for i in members:
                results[i] = await asyncio.to_thread(loaded.run, list(wanted), items[i][2])
            continue
        offsets = np.cumsum([0] + rows)
        for i, start, end in zip(members, offsets[:-1], offsets[1:]):
            results[i] = [o[start:end] for o in outputs]
    return results
