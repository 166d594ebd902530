"""Access checks inside every replica, before a request reaches the model.

    401  no key, a malformed, unknown or revoked key (``Authorization: Bearer maas_<id>_<secret>``)
    403  the key's scope does not include the model, or its tenant has not accepted the current
         version of the model's agreement
    429  over the key's rate (``Retry-After``) or its quota (naming the quota and when it resets)

Keys and acceptances are held in memory and re-read every ``access.refresh_s``; one not yet
seen is looked up at once (at most once a second each), so a new key works on its first
request. Rates and quotas are leased from one limiter actor per store (serve_apps.limiter);
LLM routes then reserve the request's tokens from it (serve_apps.tokens). Usage counts and
allowed payloads are written every ``access.usage_flush_s`` by a background thread
(serve_apps.metering, maas.payloads).
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from maas.access import (ANONYMOUS, KEY_PREFIX, Acceptance, AccessStore, Agreement, KeyRecord,
                         Refusal, iso, split_key)
from maas.app_args import AccessArgs
from maas.config import AgreementConfig
from maas.oip import RequestInput
from maas.payloads import PayloadLog
from serve_apps import REPLICA_LOG
from serve_apps.limiter import Leases, TokenBudget, limiter_for
from serve_apps.metering import UsageMeter

log = logging.getLogger(REPLICA_LOG)
LOOKUPS_PER_S = 20  # on-demand store reads per replica per second (unknown keys, tenants)
STORED_WAIT_S = 5.0  # an answer waits at most this long for its usage to be stored


@dataclass(frozen=True)
class Admission:
    """Who an admitted request is metered as, and whether its payload may be logged."""

    tenant: str
    key_id: str
    log_payloads: bool
    key: KeyRecord | None = None  # None: access off, or refused; its token limits, if any


NOBODY = Admission(ANONYMOUS, ANONYMOUS, False)


async def visible_models(gate: "AccessGate | None", headers: Mapping[str, str]
                         ) -> Callable[[str], bool]:
    """Which model names a request may see: its key's scope (a 401 Refusal without a key),
    or every model with access off. What the catalog and ``/v1/models`` list."""
    if gate is None:
        return lambda name: True
    return (await gate.authenticate(headers)).allows


def _unauthorized(message: str) -> Refusal:
    return Refusal(401, f"Authorization: {message}", headers={"WWW-Authenticate": "Bearer"})


class AccessGate:
    """Keys, scope, agreement, rate and quota for one model (``model`` None: only the key,
    for the server app's catalog)."""

    def __init__(self, args: AccessArgs, model: str | None = None,
                 terms: AgreementConfig | None = None,
                 connect: Callable[[str], Any] = limiter_for, owner: str | None = None,
                 base: str | None = None):
        self.args = args
        self.model = model
        # A tenant's fine-tuned model (owner): only the owner's keys, scoped to its base, may
        # use it, under the base's agreement.
        self.owner = owner
        self.terms_model = base or model
        self.store = AccessStore(args.url())
        # The model has an agreement when deploy.yaml gives it one; which version tenants must
        # accept is the store's newest, re-read with the keys: `maas agreements` publishes a
        # change at once, and these replicas then ask for it. Publishing is idempotent.
        self.enforced = bool(model and terms)
        self.agreement = (self.store.publish(self.terms_model, terms, only_new=True)[0]
                          if self.enforced else None)
        self.payloads: PayloadLog | None = None
        self._apply(self.agreement)
        self._keys: dict[str, KeyRecord] = {}
        self._accepted: dict[str, Acceptance] = {}
        self._older: dict[str, int] = {}  # tenant -> newest version it accepted, if not current
        self._looked_up: dict[str, float] = {}
        self._lookups: dict[str, asyncio.Future] = {}  # token -> its store read in flight
        self._warned = 0.0  # when a stored() wait last timed out and said so
        self._verified: dict[str, tuple[str, str]] = {}  # header -> (key id, hash it matched)
        self._lookup_window = (0.0, 0)
        self._reload()
        # connect: store URL -> the limiter actor (serve_apps.limiter.limiter_for)
        self.leases = Leases(self.store, connect)
        self.tokens = TokenBudget(self.store, connect)
        self.meter = UsageMeter(self.store)
        self._stop = threading.Event()
        threading.Thread(target=self._background, name="maas-access", daemon=True).start()

    # ---- the store, in the background ----

    def _apply(self, agreement: Agreement | None) -> None:
        """Enforce ``agreement`` (its version, and its payload terms)."""
        self.agreement = agreement
        terms = agreement.terms.data_usage if agreement is not None else None
        current = self.payloads
        if current is not None and (terms is None or current.terms != terms):
            current.flush()  # what was admitted under the old terms, written under them
        if terms is None or not terms.log_payloads:
            self.payloads = None
        elif current is None or current.terms != terms:
            self.payloads = PayloadLog(self.args.payload_folder(), self.model, terms)

    def _reload(self) -> None:
        # Keys first, swapped in whole: a revoked key is refused within refresh_s even when
        # the agreement cannot be read this time.
        self._keys = {r.key_id: r for r in self.store.keys()}
        accepted: dict[str, Acceptance] = {}
        if self.enforced:
            agreement = self.store.agreement(self.terms_model)
            if agreement is not None and agreement.version != self.agreement.version:
                self._apply(agreement)
            for acceptance in self.store.acceptances(model=self.terms_model):
                if acceptance.version == self.agreement.version:
                    accepted[acceptance.tenant] = acceptance
        self._accepted = accepted  # a whole swap: readers never see half

    def known(self, record: KeyRecord) -> None:
        """Take ``record`` as the key's state now (this replica revoked it), before the next
        re-read of the store."""
        self._keys = {**self._keys, record.key_id: record}

    def _background(self) -> None:
        next_reload = time.monotonic() + self.args.refresh_s
        wanted = self.meter.wanted  # an answer waits for its usage (access.usage_durable)
        while not self._stop.is_set():
            wanted.wait(self.args.usage_flush_s)
            wanted.clear()  # before the flush: a request recorded during it wakes the next
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
                    inputs: list[RequestInput]) -> None:
        payloads = self.payloads  # read once: the terms may change under a request
        if admission.log_payloads and payloads is not None:
            payloads.add(admission.tenant, admission.key_id, version, request_id,
                         [tensor.model_dump() for tensor in inputs])

    def log_text(self, admission: Admission, version: str, request_id: str | None,
                 prompt: Any, completion: Any) -> None:
        """An LLM request's prompt (its text, or its chat messages) and completion, into the
        payload log where the terms and the tenant allow it, redacted as the terms say."""
        payloads = self.payloads
        if admission.log_payloads and payloads is not None:
            payloads.add_text(admission.tenant, admission.key_id, version, request_id, prompt,
                              completion)

    def waits_for_usage(self, admission: Admission) -> bool:
        """Whether ``admission``'s answer waits for its usage to be stored
        (``access.usage_durable``, and a tenant's key: there is someone to bill)."""
        return self.args.usage_durable and admission.key_id != ANONYMOUS

    async def stored(self) -> None:
        """Return once every request this replica counted so far is in the usage table: an
        answer the client got is then never missing from it, even if the replica's node is
        lost a moment later. Waits at most STORED_WAIT_S, then answers anyway (the store
        unreachable: serving goes on, and the counts are written once it is back)."""
        if not await self.meter.stored(STORED_WAIT_S) and time.monotonic() - self._warned > 30:
            self._warned = time.monotonic()
            log.warning("usage not in the access store after %.0f s; answering anyway (it "
                        "stays counted in memory until written)", STORED_WAIT_S)

    def close(self) -> None:
        self._stop.set()
        self.meter.wanted.set()
        self.flush()

    async def _look_up(self, token: str, read: Callable[[], Any]) -> Any:
        """``read()`` from the store, off the event loop, for a key or tenant not held yet
        (``token``): None when the lookup budget says no. Requests that arrive while a read
        for the same token is in flight wait for its answer (a new key's first burst of
        concurrent requests used to get one answer and 401s for the rest)."""
        pending = self._lookups.get(token)
        if pending is None:
            if not self._may_look_up(token):
                return None
            pending = self._lookups[token] = asyncio.ensure_future(asyncio.to_thread(read))
            pending.add_done_callback(lambda _: self._lookups.pop(token, None))
        return await asyncio.shield(pending)

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
        if record is None:
            record = await self._look_up(key_id, lambda: self.store.key(key_id))
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

    def check_scope(self, record: KeyRecord) -> None:
        if self.owner is not None and record.tenant != self.owner:  # not theirs: not there
            raise Refusal(404, f"model: no model {self.model!r} here", record.tenant,
                          record.key_id, param="model")
        model = self.terms_model
        if not record.allows(model):
            raise Refusal(403, f"scope: {record.label} may not use model {model!r}; its "
                               f"models: {list(record.models)}", record.tenant, record.key_id)

    async def _acceptance(self, tenant: str) -> Acceptance | None:
        accepted = self._accepted.get(tenant)
        found = None if accepted is not None else await self._look_up(
            f"tenant:{tenant}", lambda: self.store.acceptances(self.terms_model, tenant))
        if found is not None:
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
        self.check_scope(record)
        log_payloads = False
        if self.agreement is not None:
            accepted = await self._acceptance(record.tenant)
            if accepted is None:
                raise Refusal(403, self._not_accepted(record.tenant), record.tenant,
                              record.key_id)
            log_payloads = accepted.log_payloads and self.payloads is not None
        await self.leases.take(record)
        return Admission(record.tenant, record.key_id, log_payloads, record)

    def _not_accepted(self, tenant: str) -> str:
        agreement = self.agreement
        assert agreement is not None
        older = self._older.get(tenant)
        changed = (f" (it accepted version {older}; the terms have changed since)"
                   if older else "")
        return (f"agreement: tenant {tenant!r} has not accepted version {agreement.version} of "
                f"the agreement for model {self.terms_model!r} (license "
                f"{agreement.terms.license}){changed}; `maas agreements accept --tenant "
                f"{tenant} --model {self.terms_model} --version {agreement.version}`")
