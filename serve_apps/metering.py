"""What a replica counts: usage per tenant for the access store, and its Prometheus series.

Both are off the request path: a request appends to a deque or bumps an in-memory counter,
and a background flush (once a second) writes them out.
"""

import asyncio
import time
from bisect import bisect_left
from collections import Counter, deque

from maas.access import AccessStore


class UsageMeter:
    """Counts per (minute, tenant, key, model, version, status): requests, rows, latency and
    LLM prompt and completion tokens, added to the store by :meth:`flush`; counts a failed
    write could not store are kept for the next.

    A request only appends a tuple to a deque (thread-safe, no lock: a lock and a dict update
    per request showed up at 1% of a replica's samples); the flush thread sums them."""

    def __init__(self, store: AccessStore):
        self.store = store
        self._events: deque[tuple] = deque()
        self._unwritten: dict[tuple, list[float]] = {}

    def record(self, tenant: str, key_id: str, model: str, version: str, status: int,
               rows: int, ms: float, prompt_tokens: int = 0, completion_tokens: int = 0
               ) -> None:
        self._events.append((time.time(), tenant, key_id, model, version, status, rows, ms,
                             prompt_tokens, completion_tokens))

    def flush(self) -> None:
        counts, self._unwritten = self._unwritten, {}
        events = self._events
        while True:
            try:
                at, tenant, key_id, model, version, status, *amounts = events.popleft()
            except IndexError:
                break
            key = (int(at // 60 * 60), tenant, key_id, model, version, status)
            count = counts.get(key)
            if count is None:
                counts[key] = [1, *amounts]  # requests, rows, ms, prompt, completion tokens
            else:
                count[0] += 1
                for i, amount in enumerate(amounts, 1):
                    count[i] += amount
        try:
            self.store.add_usage(counts)
        except Exception:
            self._unwritten = counts  # the next flush adds them again
            raise


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

    Each Ray metric call costs tens of microseconds, a visible share of a small model's
    request, so every series is summed in memory and handed to Ray once a second."""

    FLUSH_S = 1.0

    def __init__(self) -> None:
        from ray.serve import metrics

        self._requests = metrics.Counter(
            "maas_requests", description="infer requests by tenant, model, version and HTTP "
                                         "status", tag_keys=("tenant", "model", "version", "status"))
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
        self._pending[(tenant, model, version, str(status))] += 1
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
            self._requests.inc(count, tags={"tenant": tenant, "model": model, "version": version,
                                            "status": status})
        for (model, version), count in rows.items():
            if count:
                self._rows.inc(count, tags={"model": model, "version": version})
        for (model, version, kind), count in tokens.items():
            if count:
                self._tokens.inc(count, tags={"model": model, "version": version, "kind": kind})
