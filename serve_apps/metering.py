"""What a replica counts: usage per tenant for the access store, and its Prometheus series.

A request adds to in-memory totals, and a background flush writes them out: once a second,
and at once when an answer waits for its usage to be stored (``access.usage_durable``: the
answers waiting then are written in one transaction, a group commit).
"""

import asyncio
import threading
import time
from bisect import bisect_left
from collections import Counter

from maas.access import AccessStore


class UsageMeter:
    """Counts per (minute, tenant, key, model, version, status): requests, rows, latency and
    LLM prompt and completion tokens, added to the store by :meth:`flush`.

    :meth:`record` runs on the replica's event loop and adds to running totals (a dict look-up
    and five adds); :meth:`flush` runs on the gate's thread and writes what the totals gained
    since its last successful write, so its work grows with the number of series, never with
    the number of requests. (It used to sum a deque of every request's event: at ~4,000
    requests a second that was ~7 ms of Python a second holding the GIL, a stall of every
    request in flight once a second, measured.) The totals are only ever added to, so an
    increment the flush misses while the loop is making it is written by the next one, and a
    failed write leaves what it did not write for the next one too."""

    FORGET_AFTER_S = 180  # a minute's totals are dropped this long after it, once all written

    def __init__(self, store: AccessStore):
        self.store = store
        self._totals: dict[tuple, list[float]] = {}  # requests, rows, ms, prompt, completion
        self._written: dict[tuple, list[float]] = {}  # what the store holds of each
        # One flush at a time (the gate's thread, and its close() on another): two at once
        # would both write the same gain. record() never takes it.
        self._flushing = threading.Lock()
        # Answers waiting for the next flush share one future (one wake-up of the event loop
        # per flush, not one per answer); a flush takes it before its snapshot, so every
        # request recorded before it took the future is in that flush. Taken ones are
        # resolved once a flush succeeds.
        self._batch: asyncio.Future | None = None
        self._taken: list[asyncio.Future] = []
        self.wanted = threading.Event()  # set: an answer waits, flush now

    def record(self, tenant: str, key_id: str, model: str, version: str, status: int,
               rows: int, ms: float, prompt_tokens: int = 0, completion_tokens: int = 0
               ) -> None:
        key = (int(time.time() // 60 * 60), tenant, key_id, model, version, status)
        totals = self._totals.get(key)
        if totals is None:
            totals = self._totals[key] = [0, 0, 0.0, 0, 0]
        totals[0] += 1
        totals[1] += rows
        totals[2] += ms
        totals[3] += prompt_tokens
        totals[4] += completion_tokens

    async def stored(self, timeout_s: float) -> bool:
        """Wait until what this replica recorded so far is in the store (the next flush, woken
        now, writes it with whatever else waits); False when that took over ``timeout_s``
        (the store unreachable: the counts stay in memory for the flushes after)."""
        batch = self._batch
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._batch = loop.create_future()
            loop.call_later(timeout_s, _settle, batch, False)
            self.wanted.set()
        # Shielded: a request cancelled while it waits must not cancel the others' future.
        return await asyncio.shield(batch)

    def flush(self) -> None:
        with self._flushing:
            batch, self._batch = self._batch, None  # before the snapshot, which then has them
            if batch is not None:
                self._taken.append(batch)
            self._flush()  # raises: the taken batches wait for a flush that succeeds
            taken, self._taken = self._taken, []
            for batch in taken:
                try:
                    batch.get_loop().call_soon_threadsafe(_settle, batch, True)
                except RuntimeError:  # its event loop is closed: nobody waits any more
                    pass

    def _flush(self) -> None:
        # dict.copy() and list.copy() run in C without releasing the GIL: consistent copies.
        snapshot = {key: totals.copy() for key, totals in self._totals.copy().items()}
        gained = {}
        for key, totals in snapshot.items():
            written = self._written.get(key)
            delta = totals if written is None else [a - b for a, b in zip(totals, written)]
            if any(delta):
                gained[key] = delta
        self.store.add_usage(gained)  # raises: nothing counts as written, the next retries
        self._written.update((key, snapshot[key]) for key in gained)
        oldest = time.time() - self.FORGET_AFTER_S
        for key, totals in snapshot.items():
            if key[0] < oldest and self._written.get(key) == totals:
                self._totals.pop(key, None)  # no request records into a minute this old
                self._written.pop(key, None)


def _settle(batch: asyncio.Future, stored: bool) -> None:
    if not batch.done():  # stored, or timed out, whichever came first
        batch.set_result(stored)


class SummedHistogram:
    """A Prometheus histogram counted in memory and handed to Ray once a second, as the
    series a histogram exports: ``<name>_bucket{le}`` (cumulative), ``_sum`` and ``_count``.

    Ray's Histogram.observe cost ~10 µs a call, 4% of a replica's CPU at one observation per
    request (py-spy, bench/RESULTS.md); here an observation is a bisect and an add. The series
    are gauges that only grow (until the replica restarts), which ``rate()`` and
    ``histogram_quantile()`` read as they read a histogram's counters."""

    def __init__(self, name: str, description: str, boundaries: list[float],
                 tag_keys: tuple[str, ...]):
        from ray.serve import metrics

        self.boundaries, self.tag_keys = boundaries, tag_keys
        self._les = [str(float(b)) for b in boundaries] + ["+Inf"]
        self._bucket = metrics.Gauge(f"{name}_bucket", description=f"{description}: "
                                     "observations at most le", tag_keys=(*tag_keys, "le"))
        self._sum = metrics.Gauge(f"{name}_sum", description=f"{description}: sum",
                                  tag_keys=tag_keys)
        self._count = metrics.Gauge(f"{name}_count", description=f"{description}: count",
                                    tag_keys=tag_keys)
        self._counts: dict[tuple[str, ...], list[float]] = {}  # per bucket, then the sum

    def observe(self, value: float, *tags: str) -> None:
        """One observation, tagged with ``tags`` in the order of ``tag_keys``."""
        counts = self._counts.get(tags)
        if counts is None:
            counts = self._counts[tags] = [0.0] * (len(self._les) + 1)
        counts[bisect_left(self.boundaries, value)] += 1
        counts[-1] += value

    def flush(self) -> None:
        # Every series, changed or not: Ray's agent drops a gauge that is not set again
        # within a few export intervals, and an idle version's histogram must stay (at 0 rate).
        for tags in list(self._counts):
            counts, named = self._counts[tags], dict(zip(self.tag_keys, tags))
            total = 0.0
            for le, count in zip(self._les, counts):
                total += count
                self._bucket.set(total, tags={**named, "le": le})
            self._count.set(total, tags=named)
            self._sum.set(counts[-1], tags=named)


class ReplicaMetrics:
    """Prometheus series of a replica, exported by Ray's metrics agent (``cluster.metrics_port``)
    as ``ray_maas_*``, with Serve's application, deployment and replica tags added.

    Requests carry a ``tenant`` tag only when ``tenant_names`` (``access.metrics_tenants``):
    Ray's metrics port answers whoever reaches it, without auth, so by default who the tenants
    are and how much each sends stays in the access store (``maas usage``, the console).

    Each Ray metric call costs tens of microseconds, a visible share of a small model's
    request, so every series is summed in memory and handed to Ray once a second."""

    FLUSH_S = 1.0

    def __init__(self, tenant_names: bool = False) -> None:
        from ray.serve import metrics

        self._tenant_names = tenant_names
        keys = ("tenant",) * tenant_names + ("model", "version", "status")
        self._requests = metrics.Counter(
            "maas_requests", description=f"infer requests by {', '.join(keys)}", tag_keys=keys)
        self._rows = metrics.Counter("maas_rows", description="rows answered",
                                     tag_keys=("model", "version"))
        self.latency = SummedHistogram(
            "maas_request_latency_ms", description="infer latency inside the replica (ms)",
            boundaries=[0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000],
            tag_keys=("model", "version"))
        self._tokens = metrics.Counter(
            "maas_tokens", description="LLM tokens metered, by kind (prompt or completion)",
            tag_keys=("model", "version", "kind"))
        self.batch_size = SummedHistogram(
            "maas_batch_size", description="requests per ONNX Runtime call",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256], tag_keys=("model",))
        self._pending: Counter = Counter()  # (tenant, model, version, status) -> requests
        self._pending_rows: Counter = Counter()  # (model, version) -> rows
        self._pending_tokens: Counter = Counter()  # (model, version, kind) -> tokens
        self._flushed = time.monotonic()

    def record(self, tenant: str, model: str, version: str, status: int, rows: int,
               ms: float) -> None:
        self._pending[(tenant if self._tenant_names else "", model, version, str(status))] += 1
        if status == 200:
            self._pending_rows[(model, version)] += rows
            self.latency.observe(ms, model, version)
        if time.monotonic() - self._flushed >= self.FLUSH_S:
            self.flush()

    def record_tokens(self, model: str, version: str, prompt_tokens: int,
                      completion_tokens: int) -> None:
        """An LLM request's tokens (its request is counted by :meth:`record`)."""
        self._pending_tokens[(model, version, "prompt")] += prompt_tokens
        self._pending_tokens[(model, version, "completion")] += completion_tokens

    async def flush_forever(self) -> None:
        """Flush once a second also when no request comes to do it (the last counts of a
        burst would otherwise wait for the next request). On the replica's event loop, like
        :meth:`record`, so the two never race."""
        while True:
            await asyncio.sleep(self.FLUSH_S)
            if time.monotonic() - self._flushed >= self.FLUSH_S:
                self.flush()  # also when idle: the histograms' gauges must be set again

    def flush(self) -> None:
        self.latency.flush()
        self.batch_size.flush()
        pending, rows, tokens = self._pending, self._pending_rows, self._pending_tokens
        self._pending, self._pending_rows, self._pending_tokens = Counter(), Counter(), Counter()
        self._flushed = time.monotonic()
        for (tenant, model, version, status), count in pending.items():
            tags = {"model": model, "version": version, "status": status}
            self._requests.inc(count, tags={"tenant": tenant, **tags} if self._tenant_names
                               else tags)
        for (model, version), count in rows.items():
            if count:
                self._rows.inc(count, tags={"model": model, "version": version})
        for (model, version, kind), count in tokens.items():
            if count:
                self._tokens.inc(count, tags={"model": model, "version": version, "kind": kind})
