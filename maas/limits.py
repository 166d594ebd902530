"""Rate limits and quotas as token buckets, handed out in leases.

One :class:`Buckets` runs in one Ray actor per access store (``serve_apps.gate``), so a key
limited to 50/s gets about 50/s however many replicas serve it. A replica does not ask per
request: it leases a few tokens (about 50 ms worth of the key's rate) and spends them locally,
returning what it did not use with its next ask. A refused lease says how long to wait, and
the replica refuses locally until then, so a tenant far over its rate costs the actor little.
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
    reason: str = ""  # why nothing was granted: "rate" or "quota"
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

    def acquire(self, key_id: str, want: int, returned: int, rate: float | None, capacity: int,
                quota: Quota | None) -> Grant:
        """Up to ``want`` tokens for ``key_id``; ``returned``: tokens of an earlier grant that
        went unused (they count again, for the rate and for the quota)."""
        now = self.clock()
        bucket = None
        if rate is not None:
            bucket = self._rate.get(key_id)
            if bucket is None:
                bucket = self._rate[key_id] = _Bucket(float(capacity), now)
            bucket.tokens = min(float(capacity),
                                bucket.tokens + (now - bucket.updated) * rate + returned)
            bucket.updated = now
        counter, left, resets = None, None, None
        if quota is not None:
            start, resets = period_bounds(quota.period, self.wall())
            counter = self._quota.get(key_id)
            if counter is None or counter.period_start != start:
                counter = self._quota[key_id] = _Usage(start, self.quota_used(key_id, start))
            elif returned:
                counter.used = max(0, counter.used - returned)
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


def lease_size(rate: float | None, quota_left: int | None) -> int:
    """Tokens to ask for at once: ~50 ms of the rate (1 for slow keys, so one replica cannot
    sit on another's share), and one at a time when the quota is nearly spent."""
    want = 20 if rate is None else max(1, int(rate * 0.05))
    if quota_left is not None and quota_left < 10 * want:
        return 1
    return want
