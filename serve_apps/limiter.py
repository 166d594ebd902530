"""Rate limits and quotas across replicas: one limiter actor per access store, leased from.

A replica does not ask per request: it leases a few tokens of a key's rate and quota
(:mod:`maas.limits`) and spends them locally, returning what it did not use with its next ask;
a busy key's lease is topped up in the background before it runs out.

LLM tokens are reserved whole per request from the same actor (:class:`TokenBudget`): all of
prompt + ``max_tokens`` before generation, the unused part handed back after it.
"""

import asyncio
import hashlib
import logging
import math
import time
from typing import Any, Callable

import ray

from maas.access import AccessStore, KeyRecord, Quota, Refusal, iso
from maas.limits import Buckets, Grant, lease_size
from serve_apps import REPLICA_LOG

log = logging.getLogger(REPLICA_LOG)
# Raise when what the actor's methods take changes (2: Quota in maas.access.records;
# 3: Quota.unit, reserve() and release() for LLM tokens).
LIMITER_PROTOCOL = 3


@ray.remote(num_cpus=0, max_restarts=-1)
class Limiter:
    """The one place a store's rates and quotas are counted (see maas.limits)."""

    def __init__(self, url: str):
        store = AccessStore(url)
        self.buckets = Buckets(store.quota_used)
        self.tokens = Buckets(store.token_quota_used)  # LLM tokens, reserved per request

    def acquire(self, key_id: str, want: int, returned: int, rate: float | None, capacity: int,
                quota: Quota | None) -> Grant:
        return self.buckets.acquire(key_id, want, returned, rate, capacity, quota)

    def reserve(self, key_id: str, amount: int, rate: float | None, capacity: int,
                quota: Quota | None) -> Grant:
        return self.tokens.reserve(key_id, amount, rate, capacity, quota)

    def release(self, key_id: str, amount: int, rate: float | None, capacity: int,
                quota: Quota | None) -> None:
        self.tokens.release(key_id, amount, rate, capacity, quota)


def limiter_for(url: str) -> Any:
    """The store's limiter actor, started by whichever replica asks first. The name carries
    LIMITER_PROTOCOL: a detached actor of an older maas, still running after an upgrade, could
    not read what this one sends (its classes moved), so the new replicas start their own."""
    name = (f"maas-limiter-v{LIMITER_PROTOCOL}-"
            + hashlib.sha256(url.encode()).hexdigest()[:12])
    return Limiter.options(name=name, namespace="maas", lifetime="detached",
                           get_if_exists=True).remote(url)


class _Lease:
    __slots__ = ("tokens", "size", "expires", "denied_until", "denial", "quota_left", "lock",
                 "topping_up")

    def __init__(self) -> None:
        self.tokens = 0
        self.size = 1  # tokens asked for at the last ask
        self.expires = 0.0
        self.denied_until = 0.0
        self.denial: Grant | None = None
        self.quota_left: int | None = None
        self.lock = asyncio.Lock()
        self.topping_up = False


class Leases:
    """A replica's leased tokens per key. Unused tokens go back with the next ask.

    A busy key's lease is topped up in the background before it runs out: waiting for the
    limiter actor on the request path stalled every request of the key on the replica (access
    on measured 0.90x of off with that, under 2 cores of load)."""

    TTL_S = 0.5  # a lease older than this is handed back, so no replica hoards a key's rate
    ASK_TIMEOUT_S = 2.0
    TOP_UP_FROM = 4  # leases of at least this many tokens are topped up ahead of time

    def __init__(self, store: AccessStore, connect: Callable[[str], Any] = limiter_for):
        self.url = store.url
        self._connect = connect  # store URL -> the limiter actor's handle
        self._actor: Any = None
        # While the actor cannot be reached (restarting, its node lost) this replica counts
        # alone: limits then hold per replica instead of across them, and serving goes on.
        self._local = Buckets(store.quota_used)
        self._leases: dict[str, _Lease] = {}
        self._warned = 0.0
        self._tasks: set[asyncio.Task] = set()

    async def take(self, record: KeyRecord) -> None:
        """Spend one token of ``record``'s rate and quota, or raise a 429 Refusal."""
        if record.rate is None and record.quota is None:
            return
        lease = self._leases.get(record.key_id)
        if lease is None:
            lease = self._leases[record.key_id] = _Lease()
        now = time.monotonic()
        if lease.tokens > 0 and now < lease.expires:
            lease.tokens -= 1
            if (lease.size >= self.TOP_UP_FROM and not lease.topping_up
                    and (lease.tokens < lease.size // 2
                         or now > lease.expires - self.TTL_S / 2)):
                lease.topping_up = True
                task = asyncio.create_task(self._top_up(record, lease))
                self._tasks.add(task)  # held until done: the loop keeps only weak references
                task.add_done_callback(self._tasks.discard)
            return
        async with lease.lock:  # one ask per key at a time; the others then spend its lease
            now = time.monotonic()
            if lease.tokens > 0 and now < lease.expires:
                lease.tokens -= 1
                return
            if now < lease.denied_until and lease.denial is not None:
                raise self._refusal(record, lease.denial, lease.denied_until - now)
            returned = lease.tokens  # left over in an expired lease: handed back
            lease.tokens -= returned
            lease.size = lease_size(record.rate, lease.quota_left)
            grant = await self._ask(record, lease.size, returned)
            lease.quota_left = grant.quota_left
            if grant.granted < 1:
                lease.denial = grant
                lease.denied_until = now + min(grant.retry_after_s, 1.0)
                raise self._refusal(record, grant, grant.retry_after_s)
            lease.tokens += grant.granted - 1
            lease.expires = time.monotonic() + self.TTL_S

    async def _top_up(self, record: KeyRecord, lease: _Lease) -> None:
        try:
            grant = await self._ask(record, lease.size, 0)
            lease.quota_left = grant.quota_left
            if grant.granted > 0:
                lease.tokens += grant.granted
                lease.expires = time.monotonic() + self.TTL_S
        finally:
            lease.topping_up = False

    async def _ask(self, record: KeyRecord, want: int, returned: int) -> Grant:
        args = (record.key_id, want, returned, record.rate, record.capacity, record.quota)
        try:
            if self._actor is None:
                self._actor = await asyncio.to_thread(self._connect, self.url)
            return await asyncio.wait_for(self._actor.acquire.remote(*args), self.ASK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure: count locally, say so
            self._actor = None
            if time.monotonic() - self._warned > 30:
                self._warned = time.monotonic()
                log.warning("rate limiter actor unreachable (%s); limiting per replica", exc)
            return await asyncio.to_thread(self._local.acquire, *args)

    @staticmethod
    def _refusal(record: KeyRecord, grant: Grant, wait_s: float) -> Refusal:
        retry = str(max(1, math.ceil(wait_s)))  # Retry-After takes whole seconds
        if grant.reason == "quota":
            message = (f"quota: {record.label} has used its {record.quota}; it resets at "
                       f"{iso(grant.quota_resets_at)}")
        else:
            message = (f"rate: {record.label} may send {record.rate:g} requests/s (bursts "
                       f"of {record.capacity}); retry in {wait_s:.3f} s")
        return Refusal(429, message, record.tenant, record.key_id, {"Retry-After": retry})


class TokenBudget:
    """A replica's side of a key's LLM token limits (``--tokens-per-minute``,
    ``--token-quota``): one whole reservation per request from the limiter actor, the unused
    part released after generation. Counted per replica while the actor cannot be reached,
    like :class:`Leases`; a release goes back to whichever granted the reservation."""

    ASK_TIMEOUT_S = 2.0

    def __init__(self, store: AccessStore, connect: Callable[[str], Any] = limiter_for):
        self.url = store.url
        self._connect = connect
        self._actor: Any = None
        self._local = Buckets(store.token_quota_used)
        self._warned = 0.0

    @staticmethod
    def limited(record: KeyRecord) -> bool:
        return record.tokens_per_minute is not None or record.token_quota is not None

    @staticmethod
    def _limits(record: KeyRecord) -> tuple[float | None, int, Quota | None]:
        """(tokens per second, bucket capacity: a minute's worth, token quota)."""
        per_minute = record.tokens_per_minute
        return (None if per_minute is None else per_minute / 60.0, per_minute or 0,
                record.token_quota)

    async def reserve(self, record: KeyRecord, amount: int) -> tuple[Grant, bool]:
        """(the grant of all ``amount`` tokens or a refusal, whether this replica's own
        buckets answered because the actor could not be reached)."""
        args = (record.key_id, amount, *self._limits(record))
        try:
            if self._actor is None:
                self._actor = await asyncio.to_thread(self._connect, self.url)
            return await asyncio.wait_for(self._actor.reserve.remote(*args),
                                          self.ASK_TIMEOUT_S), False
        except Exception as exc:  # noqa: BLE001 - any failure: count locally, say so
            self._actor = None
            if time.monotonic() - self._warned > 30:
                self._warned = time.monotonic()
                log.warning("rate limiter actor unreachable (%s); limiting tokens per "
                            "replica", exc)
            return await asyncio.to_thread(self._local.reserve, *args), True

    def release(self, record: KeyRecord, amount: int, local: bool) -> None:
        """Hand back ``amount`` unused tokens (negative: used beyond the reservation) to
        whichever granted them. Never blocks: an actor call is only sent, and the local
        buckets are in memory. Lost if the actor went away: a restarted actor re-reads the
        period's tokens from the usage table, where the engine's counts are."""
        if amount == 0:
            return
        args = (record.key_id, amount, *self._limits(record))
        try:
            if local:
                self._local.release(*args)
            elif self._actor is not None:
                self._actor.release.remote(*args)
        except Exception as exc:  # noqa: BLE001 - metering must not fail a finished request
            log.warning("unused tokens of %s not handed back: %s", record.label, exc)
