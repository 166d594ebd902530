"""Access checks inside every replica, before a request reaches the model, and its metering.

    401  no key, a malformed, unknown or revoked key (``Authorization: Bearer maas_<id>_<secret>``)
    403  the key's scope does not include the model, or its tenant has not accepted the current
         version of the model's agreement
    429  over the key's rate (``Retry-After``) or its quota (naming the quota and when it resets)

Keys and acceptances are held in memory and re-read every ``access.refresh_s``; one not yet
seen is looked up at once (at most once a second each), so a new key works on its first
request. Rates and quotas are leased from one limiter actor per store (:mod:`maas.limits`).
Usage counts are written every ``access.usage_flush_s`` by a background thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import ray
from pydantic import BaseModel, ConfigDict, Field

from maas.access import (KEY_PREFIX, Acceptance, Agreement, AccessStore, KeyRecord, Quota, iso,
                         split_key)
from maas.config import AgreementConfig, DataUsageConfig, access_store_uri, expand_state_dir
from maas.limits import Buckets, Grant, lease_size
from maas.oip import InferError
from maas.payloads import PayloadLog

log = logging.getLogger("ray.serve")
ANONYMOUS = "-"  # tenant and key of requests refused before a key was recognised
LOOKUPS_PER_S = 20  # on-demand store reads per replica per second (unknown keys, tenants)


class AccessArgs(BaseModel):
    """The ``access`` section as the serve apps receive it."""

    model_config = ConfigDict(extra="forbid")

    state_dir: str
    store: str | None = Field(None, description="SQLAlchemy URL; null: sqlite under state_dir")
    refresh_s: float = Field(2.0, gt=0)
    usage_flush_s: float = Field(1.0, gt=0)
    payload_dir: str | None = None

    def url(self) -> str:
        return access_store_uri(self.store, self.state_dir)

    def payload_folder(self) -> Path:
        if self.payload_dir:
            return expand_state_dir(self.payload_dir)
        return expand_state_dir(self.state_dir) / "payloads"


@dataclass(frozen=True)
class Admission:
    tenant: str
    key_id: str
    log_payloads: bool


class Refusal(InferError):
    """An access refusal, with the tenant it was refused to (metered as such)."""

    def __init__(self, status: int, message: str, tenant: str = ANONYMOUS,
                 key_id: str = ANONYMOUS, headers: dict[str, str] | None = None):
        super().__init__(status, message, headers)
        self.tenant = tenant
        self.key_id = key_id


def _unauthorized(message: str) -> Refusal:
    return Refusal(401, f"Authorization: {message}", headers={"WWW-Authenticate": "Bearer"})


def _label(record: KeyRecord) -> str:
    return f"key {KEY_PREFIX}{record.key_id}_... of tenant {record.tenant!r}"


# ---- rate limits and quotas ----------------------------------------------------------------

@ray.remote(num_cpus=0, max_restarts=-1)
class Limiter:
    """The one place a store's rates and quotas are counted (see maas.limits)."""

    def __init__(self, url: str):
        self.buckets = Buckets(AccessStore(url).quota_used)

    def acquire(self, key_id: str, want: int, returned: int, rate: float | None, capacity: int,
                quota: Quota | None) -> Grant:
        return self.buckets.acquire(key_id, want, returned, rate, capacity, quota)


def limiter_for(url: str) -> Any:
    """The store's limiter actor, started by whichever replica asks first."""
    name = "maas-limiter-" + hashlib.sha256(url.encode()).hexdigest()[:12]
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

    def __init__(self, store: AccessStore):
        self.url = store.url
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
                self._actor = await asyncio.to_thread(limiter_for, self.url)
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
            message = (f"quota: {_label(record)} has used its {record.quota}; it resets at "
                       f"{iso(grant.quota_resets_at)}")
        else:
            message = (f"rate: {_label(record)} may send {record.rate:g} requests/s (bursts "
                       f"of {record.capacity}); retry in {wait_s:.3f} s")
        return Refusal(429, message, record.tenant, record.key_id, {"Retry-After": retry})


# ---- metering ---------------------------------------------------------------------------------

class UsageMeter:
    """Counts per (minute, tenant, key, model, version, status), added to the store by
    :meth:`flush`; counts a failed write could not store are kept for the next.

    A request only appends a tuple to a deque (thread-safe, no lock: a lock and a dict update
    per request showed up at 1% of a replica's samples); the flush thread sums them."""

    def __init__(self, store: AccessStore):
        self.store = store
        self._events: deque[tuple] = deque()
        self._unwritten: dict[tuple, list[float]] = {}

    def record(self, tenant: str, key_id: str, model: str, version: str, status: int,
               rows: int, ms: float) -> None:
        self._events.append((time.time(), tenant, key_id, model, version, status, rows, ms))

    def flush(self) -> None:
        counts, self._unwritten = self._unwritten, {}
        events = self._events
        while True:
            try:
                at, tenant, key_id, model, version, status, rows, ms = events.popleft()
            except IndexError:
                break
            key = (int(at // 60 * 60), tenant, key_id, model, version, status)
            count = counts.get(key)
            if count is None:
                counts[key] = [1, rows, ms]
            else:
                count[0] += 1
                count[1] += rows
                count[2] += ms
        try:
            self.store.add_usage(counts)
        except Exception:
            self._unwritten = counts  # the next flush adds them again
            raise


# ---- the gate ---------------------------------------------------------------------------------

class AccessGate:
    """Keys, scope, agreement, rate and quota for one model (``model`` None: only the key,
    for the server app's catalog)."""

    def __init__(self, args: AccessArgs, model: str | None = None,
                 terms: AgreementConfig | None = None):
        self.args = args
        self.model = model
        self.store = AccessStore(args.url())
        # The model has an agreement when deploy.yaml gives it one; which version tenants must
        # accept is the store's newest, re-read with the keys: `maas agreements` publishes a
        # change at once, and these replicas then ask for it. Publishing is idempotent.
        self.enforced = bool(model and terms)
        self.agreement = (self.store.publish(model, terms, only_new=True)[0]
                          if self.enforced else None)
        self.payloads: PayloadLog | None = None
        self._apply(self.agreement)
        self._keys: dict[str, KeyRecord] = {}
        self._accepted: dict[str, Acceptance] = {}
        self._older: dict[str, int] = {}  # tenant -> newest version it accepted, if not current
        self._looked_up: dict[str, float] = {}
        self._verified: dict[str, tuple[str, str]] = {}  # header -> (key id, hash it matched)
        self._lookup_window = (0.0, 0)
        self._reload()
        self.leases = Leases(self.store)
        self.meter = UsageMeter(self.store)
        self._stop = threading.Event()
        threading.Thread(target=self._background, name="maas-access", daemon=True).start()

    # ---- the store, in the background ----

    def _apply(self, agreement: Agreement | None) -> None:
        """Enforce ``agreement`` (its version, and its payload terms)."""
        self.agreement = agreement
        terms = (DataUsageConfig.model_validate(agreement.terms.get("data_usage", {}))
                 if agreement is not None else None)
        current = self.payloads
        if current is not None and (terms is None or current.terms != terms):
            current.flush()  # what was admitted under the old terms, written under them
        if terms is None or not terms.log_payloads:
            self.payloads = None
        elif current is None or current.terms != terms:
            self.payloads = PayloadLog(self.args.payload_folder(), self.model, terms)

    def _reload(self) -> None:
        keys = {r.key_id: r for r in self.store.keys()}
        accepted: dict[str, Acceptance] = {}
        if self.enforced:
            agreement = self.store.agreement(self.model)
            if agreement is not None and agreement.version != self.agreement.version:
                self._apply(agreement)
            for acceptance in self.store.acceptances(model=self.model):
                if acceptance.version == self.agreement.version:
                    accepted[acceptance.tenant] = acceptance
        self._keys, self._accepted = keys, accepted  # whole swaps: readers never see half

    def _background(self) -> None:
        next_reload = time.monotonic() + self.args.refresh_s
        while not self._stop.wait(self.args.usage_flush_s):
            self.flush()
            if time.monotonic() >= next_reload:
                next_reload = time.monotonic() + self.args.refresh_s
                try:
                    self._reload()
                except Exception as exc:  # keep the last good view; say why
                    log.warning("access store not re-read: %s", exc)

    def flush(self) -> None:
        try:
            self.meter.flush()
            if self.payloads is not None:
                self.payloads.flush()
        except Exception as exc:
            log.warning("usage not written yet (kept for the next flush): %s", exc)

    def log_payload(self, admission: Admission, version: str, request_id: str | None,
                    inputs: list[dict[str, Any]]) -> None:
        payloads = self.payloads  # read once: the terms may change under a request
        if admission.log_payloads and payloads is not None:
            payloads.add(admission.tenant, admission.key_id, version, request_id, inputs)

    def close(self) -> None:
        self._stop.set()
        self.flush()

    def _may_look_up(self, token: str) -> bool:
        """One on-demand store read per key or tenant per second, LOOKUPS_PER_S in all: a
        stream of made-up keys cannot turn into a stream of database reads."""
        now = time.monotonic()
        if now - self._looked_up.get(token, -1e9) < 1.0:
            return False
        start, count = self._lookup_window
        if now - start >= 1.0:
            start, count = now, 0
        if count >= LOOKUPS_PER_S:
            return False
        self._lookup_window = (start, count + 1)
        if len(self._looked_up) > 10_000:
            self._looked_up.clear()
        self._looked_up[token] = now
        return True

    # ---- checks ----

    async def authenticate(self, headers: Mapping[str, str]) -> KeyRecord:
        """The key record of the request's bearer key, or a 401 Refusal."""
        header = headers.get("authorization")
        known = self._verified.get(header) if header else None
        if known is not None:  # seen and verified: skip the parse and the hash
            record = self._keys.get(known[0])
            if record is not None and record.key_hash == known[1] and record.revoked_at is None:
                return record
        if not header:
            raise _unauthorized("missing; send 'Authorization: Bearer <key>' "
                                "(`maas keys create` makes a key)")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("use the Bearer scheme: 'Authorization: Bearer <key>'")
        parts = split_key(token.strip())
        if parts is None:
            raise _unauthorized("not a maas API key (keys look like maas_<id>_<secret>)")
        key_id, secret = parts
        record = self._keys.get(key_id)
        if record is None and self._may_look_up(key_id):
            record = await asyncio.to_thread(self.store.key, key_id)
            if record is not None:
                self._keys = {**self._keys, key_id: record}
        if record is None or not record.verifies(secret):
            raise _unauthorized("unknown API key")
        if record.revoked_at is not None:
            raise _unauthorized(f"key {KEY_PREFIX}{key_id}_... was revoked at "
                                f"{iso(record.revoked_at)}")
        if len(self._verified) > 10_000:
            self._verified = {}
        self._verified[header] = (key_id, record.key_hash)
        return record

    @staticmethod
    def check_scope(record: KeyRecord, model: str) -> None:
        if not record.allows(model):
            raise Refusal(403, f"scope: {_label(record)} may not use model {model!r}; its "
                               f"models: {list(record.models)}", record.tenant, record.key_id)

    async def _acceptance(self, tenant: str) -> Acceptance | None:
        accepted = self._accepted.get(tenant)
        if accepted is None and self._may_look_up(f"tenant:{tenant}"):
            found = await asyncio.to_thread(self.store.acceptances, self.model, tenant)
            current = self.agreement.version  # type: ignore[union-attr]
            accepted = next((a for a in found if a.version == current), None)
            if accepted is not None:
                self._accepted = {**self._accepted, tenant: accepted}
            elif found:
                self._older[tenant] = max(a.version for a in found)
        return accepted

    async def admit(self, headers: Mapping[str, str]) -> Admission:
        """Every check for one infer request; spends one token of the key's rate and quota."""
        record = await self.authenticate(headers)
        self.check_scope(record, self.model)  # type: ignore[arg-type]
        log_payloads = False
        if self.agreement is not None:
            accepted = await self._acceptance(record.tenant)
            if accepted is None:
                raise Refusal(403, self._not_accepted(record.tenant), record.tenant,
                              record.key_id)
            log_payloads = accepted.log_payloads and self.payloads is not None
        await self.leases.take(record)
        return Admission(record.tenant, record.key_id, log_payloads)

    def _not_accepted(self, tenant: str) -> str:
        agreement = self.agreement
        assert agreement is not None
        older = self._older.get(tenant)
        changed = (f" (it accepted version {older}; the terms have changed since)"
                   if older else "")
        return (f"agreement: tenant {tenant!r} has not accepted version {agreement.version} of "
                f"the agreement for model {self.model!r} (license "
                f"{agreement.terms.get('license')}){changed}; `maas agreements accept --tenant "
                f"{tenant} --model {self.model} --version {agreement.version}`")
