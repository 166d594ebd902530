"""Rate limits and quotas as token buckets, handed out in leases.

One :class:`Buckets` runs in one Ray actor per access store (``serve_apps.gate``), so a key
limited to 50/s gets about 50/s however many replicas serve it. A replica does not ask per
request: it leases a few tokens (about 50 ms worth of the key's rate) and spends them locally,
returning what it did not use with its next ask. A refused lease says how long to wait, and
the replica refuses locally until then, so a tenant far over its rate costs the actor little.

LLM tokens (prompt + completion) are counted by a second :class:`Buckets` in the same actor,
reserved whole per request instead: :meth:`Buckets.reserve` grants all of a request's
prompt + ``max_tokens`` or nothing (a request is never cut off midway for want of tokens),
and :meth:`Buckets.release` hands back what the completion did not use. One ask per request
is cheap next to a generation's seconds, and it keeps the count exact.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from maas.access import Quota, period_bounds


@dataclass(frozen=True)
class Grant:
    granted: int
    retry_after_s: float = 0.0  # when nothing was granted: when to ask again
    # why nothing was granted: "rate" or "quota"; "too_large": more than the key's limit
    # could ever grant at once (its bucket's capacity, or its whole quota)
    reason: str = ""
    quota_left: int | None = None
    quota_resets_at: float | None = None  # epoch seconds


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class _Usage:
    period_start: float
    used: int


@dataclass
class Buckets:
    """Token buckets (rate) and period counters (quota) per key.

    ``quota_used(key_id, since)`` reads what the durable usage table already counts, the first
    time a key is seen in a quota period: a restarted limiter starts from there, not from 0."""

    quota_used: Callable[[str, float], int]
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _rate: dict[str, _Bucket] = field(default_factory=dict)
    _quota: dict[str, _Usage] = field(default_factory=dict)

    def _bucket(self, key_id: str, rate: float | None, capacity: int, returned: int
                ) -> _Bucket | None:
        """``key_id``'s rate bucket, refilled to now, ``returned`` tokens added back."""
        if rate is None:
            return None
        now = self.clock()
        bucket = self._rate.get(key_id)
        if bucket is None:
            bucket = self._rate[key_id] = _Bucket(float(capacity), now)
        bucket.tokens = min(float(capacity),
                            bucket.tokens + (now - bucket.updated) * rate + returned)
        bucket.updated = now
        return bucket

    def _counter(self, key_id: str, quota: Quota | None, returned: int
                 ) -> tuple[_Usage | None, float | None]:
        """``key_id``'s counter in the current period of ``quota``, ``returned`` taken off,
        and when the period ends. A new period starts from the durable usage."""
        if quota is None:
            return None, None
        start, resets = period_bounds(quota.period, self.wall())
        counter = self._quota.get(key_id)
        if counter is None or counter.period_start != start:
            counter = self._quota[key_id] = _Usage(start, self.quota_used(key_id, start))
        elif returned:
            counter.used = max(0, counter.used - returned)
        return counter, resets

    def acquire(self, key_id: str, want: int, returned: int, rate: float | None, capacity: int,
                quota: Quota | None) -> Grant:
        """Up to ``want`` tokens for ``key_id``; ``returned``: tokens of an earlier grant that
        went unused (they count again, for the rate and for the quota)."""
        bucket = self._bucket(key_id, rate, capacity, returned)
        counter, resets = self._counter(key_id, quota, returned)
        left = None
        if counter is not None and quota is not None:
            left = quota.limit - counter.used
            if left <= 0:
                return Grant(0, max(1.0, resets - self.wall()), "quota", 0, resets)
        granted = max(1, want)
        if bucket is not None:
            if bucket.tokens < 1.0:
                return Grant(0, (1.0 - bucket.tokens) / rate, "rate", left, resets)
            granted = min(granted, math.floor(bucket.tokens))
        if left is not None:
            # At most a tenth of what is left per lease: tokens one replica holds are tokens
            # another cannot grant, so near the end of a quota they go out one at a time.
            granted = min(granted, max(1, left // 10))
        if bucket is not None:
            bucket.tokens -= granted
        if counter is not None and left is not None:
            counter.used += granted
            left -= granted
        return Grant(granted, 0.0, "", left, resets)

    def reserve(self, key_id: str, amount: int, rate: float | None, capacity: int,
                quota: Quota | None) -> Grant:
        """All of ``amount`` tokens for ``key_id``, or none: a refusal says why and when to
        ask again ("too_large": never, at this size)."""
        bucket = self._bucket(key_id, rate, capacity, 0)
        counter, resets = self._counter(key_id, quota, 0)
        left = None
        if counter is not None and quota is not None:
            left = quota.limit - counter.used
            if amount > quota.limit:
                return Grant(0, 0.0, "too_large", left, resets)
            if amount > left:
                return Grant(0, max(1.0, resets - self.wall()), "quota", left, resets)
        if bucket is not None and rate is not None:
            if amount > capacity:
                return Grant(0, 0.0, "too_large", left, resets)
            if bucket.tokens < amount:
                return Grant(0, (amount - bucket.tokens) / rate, "rate", left, resets)
            bucket.tokens -= amount
        if counter is not None and left is not None:
            counter.used += amount
            left -= amount
        return Grant(amount, 0.0, "", left, resets)

    def release(self, key_id: str, amount: int, rate: float | None, capacity: int,
                quota: Quota | None) -> None:
        """Hand back ``amount`` reserved tokens that went unused; a negative ``amount`` takes
        what a request used beyond its reservation (the engine's counts are what counts)."""
        if amount == 0:
            return
        bucket = self._rate.get(key_id) if rate is not None else None
        if bucket is not None:
            self._bucket(key_id, rate, capacity, amount)  # may go below 0: the next ask waits
        counter = self._quota.get(key_id) if quota is not None else None
        if counter is not None and quota is not None:
            start, _ = period_bounds(quota.period, self.wall())
            if counter.period_start == start:  # a past period's tokens stay where they were
                counter.used = max(0, counter.used - amount)


def lease_size(rate: float | None, quota_left: int | None) -> int:
    """Tokens to ask for at once: ~50 ms of the rate (1 for slow keys, so one replica cannot
    sit on another's share), and one at a time when the quota is nearly spent."""
    want = 20 if rate is None else max(1, int(rate * 0.05))
    if quota_left is not None and quota_left < 10 * want:
        return 1
    return want
