"""Concurrent infer requests answered by shared ONNX Runtime calls.

A replica's requests queue in a :class:`MicroBatcher`; whatever queued while the last batch
ran (or arrived in the same turn of the event loop) runs next, as one batch. Within a batch,
requests for the same version, outputs and row shape are concatenated into one call, and each
gets its own rows back. An output that is not one row per input row cannot be split, so its
group runs one request at a time.

Where a batch runs is measured, not guessed: batches that take less than ``inline_below_s``
(the digits MLP: ~15 µs for 64 rows) run on the event loop, because the hop to a thread and
back costs more than the call (measured in bench/RESULTS.md); slower ones (a text embedder,
a burst of large requests) run on the replica's one batch thread, so the loop keeps reading
requests while ONNX Runtime works.

A batch on the thread is timed by the thread's own CPU time, not the clock: on a busy replica
its clock time includes waiting for the GIL the event loop holds (up to the 5 ms switch
interval per wait), which once made a cheap model look slow, and kept it on the thread, exactly
when the replica was busiest (half of its batches, py-spy at 32 clients). ONNX Runtime's
calling thread works on its own share and spins while its pool finishes, so its CPU time is
not less than the call's. Where that does not hold (a call that blocks), the batch run on the
loop measures slow by the clock, and the thread's figures are not trusted for a while
(DISTRUST_S), so a blocking model is not tried on the loop again and again.
"""

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Protocol

import numpy as np

Feeds = dict[str, np.ndarray]
Outputs = list[np.ndarray]
# After a batch on the loop measures slow where the thread's CPU time said fast, the thread's
# word is not taken for this long, doubling each time (a blocking model), up to MAX. Short at
# first: a fast model's batch that was merely preempted should not send many others to the
# thread.
DISTRUST_S, MAX_DISTRUST_S = 0.01, 64.0


class Runnable(Protocol):
    def run(self, wanted: list[str], feeds: Feeds) -> list[np.ndarray]: ...


Item = tuple[Runnable, tuple[str, ...], Feeds]  # (loaded version, wanted outputs, inputs)


def _groups(items: list[Item]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, (loaded, wanted, feeds) in enumerate(items):
        shapes = tuple((k, v.shape[1:]) for k, v in sorted(feeds.items()))
        groups.setdefault((id(loaded), wanted, shapes), []).append(i)
    return list(groups.values())


def _run_group(items: list[Item], members: list[int]) -> list[Outputs]:
    loaded, wanted, first = items[members[0]]
    if len(members) == 1:
        return [loaded.run(list(wanted), first)]
    feeds = {name: np.concatenate([items[i][2][name] for i in members]) for name in first}
    outputs = loaded.run(list(wanted), feeds)
    rows = [_rows(items[i]) for i in members]
    if any(o.ndim == 0 or len(o) != sum(rows) for o in outputs):
        return [loaded.run(list(wanted), items[i][2]) for i in members]
    offsets = np.cumsum([0] + rows)
    return [[o[start:end] for o in outputs] for start, end in zip(offsets[:-1], offsets[1:])]


def run_batch(items: list[Item]) -> list[Outputs | BaseException]:
    """Each item's outputs, computed with as few ONNX Runtime calls as the items allow
    (blocking); a group whose call fails gets the exception instead, the others their rows."""
    results: list[Outputs | BaseException] = [[] for _ in items]
    for members in _groups(items):
        try:
            answers: list[Outputs | BaseException] = list(_run_group(items, members))
        except Exception as exc:  # that group's requests fail; the rest of the batch stands
            answers = [exc] * len(members)
        for i, answer in zip(members, answers):
            results[i] = answer
    return results


class MicroBatcher:
    """One replica's queue of infer calls, run ``max_batch_size`` at a time at most, one
    batch after another. ``wait_s`` > 0 holds a batch open that long for more requests (a
    full batch goes at once).

    Which batches run on the event loop is learnt from the batches measured so far, by their
    row count: a batch no larger than the largest measured under ``inline_below_s`` (and
    smaller than the smallest measured over it) runs inline; any other runs on the batch
    thread, and is measured there. So a burst of large requests after many small ones goes to
    the thread instead of stalling the loop."""

    def __init__(self, max_batch_size: int, wait_s: float, inline_below_s: float,
                 observe: Callable[[int], None]):
        self.max_batch_size, self.wait_s = max_batch_size, wait_s
        self.inline_below_s = inline_below_s
        self._observe = observe  # batch size, for the replica's histogram
        self._queue: deque[tuple[Item, asyncio.Future]] = deque()
        self._busy = False  # a batch is scheduled or running
        self._timer: asyncio.TimerHandle | None = None  # wait_s > 0: the open batch's deadline
        self._fast_rows = 0  # the largest batch (rows) measured under inline_below_s
        self._slow_rows: float = float("inf")  # the smallest measured over it
        self._distrust_until = 0.0  # monotonic: the thread's measurements are not trusted
        self._distrust_s = DISTRUST_S  # for how long, next time a loop batch contradicts them
        self._pool: ThreadPoolExecutor | None = None

    def inline(self, rows: int) -> bool:
        """Whether a batch of ``rows`` runs on the event loop (see the class docstring)."""
        return rows <= self._fast_rows and rows < self._slow_rows

    async def run(self, item: Item, alone: bool = False) -> Outputs:
        """``item``'s outputs, computed in the next batch. ``alone``: no other request is in the
        replica to share a batch with; then an idle batcher runs it at once where it measured
        cheap, with no queue, future or extra turn of the loop (at 1 client those were a fifth
        of maas's own time per request: py-spy, bench/RESULTS.md)."""
        if alone and not self._busy and self.wait_s == 0:
            rows = _rows(item)
            if self.inline(rows):
                self._observe(1)
                loaded, wanted, feeds = item
                started = time.perf_counter()
                try:
                    return loaded.run(list(wanted), feeds)
                finally:
                    self._learn(rows, time.perf_counter() - started, True)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((item, future))
        if not self._busy:
            self._busy = True
            if self.wait_s > 0:
                self._timer = loop.call_later(self.wait_s, self._next, loop)
            else:  # after the requests already runnable in this turn have queued too
                loop.call_soon(self._next, loop)
        elif self._timer is not None and len(self._queue) >= self.max_batch_size:
            self._timer.cancel()  # full: no reason to wait longer
            self._timer = None
            loop.call_soon(self._next, loop)
        return await future

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        batch = []
        while self._queue and len(batch) < self.max_batch_size:
            entry = self._queue.popleft()
            if not entry[1].done():  # cancelled meanwhile (a handle call, a timeout)
                batch.append(entry)
        if not batch:
            self._busy = False
            return
        try:
            self._observe(len(batch))
            items = [item for item, _ in batch]
            rows = sum(_rows(item) for item in items)
            if self.inline(rows):
                self._finish(loop, batch, self._timed(items, rows, True))
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="maas-batch")
            done = loop.run_in_executor(self._pool, self._timed, items, rows, False)
        except Exception as exc:  # never leave a request waiting, nor the queue stuck
            self._finish(loop, batch, [exc] * len(batch))
            return
        done.add_done_callback(lambda f: self._finish(loop, batch, _outcome(f, len(batch))))

    def _timed(self, items: list[Item], rows: int, on_loop: bool
               ) -> list[Outputs | BaseException]:
        # On the loop, the clock is what the loop was held for; on the thread, its CPU time
        # (see the module docstring).
        clock = time.perf_counter if on_loop else time.thread_time
        started = clock()
        results = run_batch(items)
        self._learn(rows, clock() - started, on_loop)
        return results

    def _learn(self, rows: int, seconds: float, on_loop: bool) -> None:
        now = time.monotonic()
        if seconds < self.inline_below_s:
            if on_loop:
                self._distrust_s = DISTRUST_S
            elif now < self._distrust_until:
                return
            self._fast_rows = max(self._fast_rows, rows)
            # A slow measurement this contradicts (a cold first call, a pause) no longer holds.
            self._slow_rows = max(self._slow_rows, rows + 1)
            return
        self._slow_rows = min(self._slow_rows, rows)
        self._fast_rows = min(self._fast_rows, rows - 1)
        if on_loop:  # the thread's CPU time said fast: not for a while
            self._distrust_until = now + self._distrust_s
            self._distrust_s = min(self._distrust_s * 2, MAX_DISTRUST_S)

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list, results: list) -> None:
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._queue:
            loop.call_soon(self._next, loop)
        else:
            self._busy = False

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _rows(item: Item) -> int:
    first = next(iter(item[2].values()), None)
    return len(first) if first is not None and first.ndim else 1


def _outcome(done: asyncio.Future, size: int) -> list:
    """A threaded batch's results, or its failure for each of its ``size`` requests."""
    if done.cancelled():
        return [asyncio.CancelledError()] * size
    error = done.exception()
    return [error] * size if error is not None else done.result()
