"""The access store: tenants, API keys, model agreements and their acceptances, usage.

    maas keys create --tenant acme --models digits --rate 50/s --quota 100000/day
    maas agreements accept --tenant acme --model digits --version 1
    maas usage --tenant acme

One database shared by the CLI, the pipeline and every Serve replica: SQLite under ``state_dir``
by default (one machine), or PostgreSQL (``postgresql+psycopg://...``) for replicas on several
machines (``maas.access.database``). Keys are random, shown once, and stored only as a salted
SHA-256: they carry 256 random bits, so a slow password hash would add latency to every request
without making a guess any less hopeless.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any, Iterable

import sqlalchemy as sa

from maas.access.records import (KEY_PREFIX, Acceptance, AccessError, Agreement, KeyRecord,
                                 Quota, key_digest, key_id_of, stored_terms, terms_digest)
from maas.access.database import engine, insert_for, shown
from maas.access.tables import acceptances, agreements, api_keys, tenants
from maas.access.usage import UsageQueries
from maas.config import TENANT_PATTERN, AgreementConfig, ModelConfig

def _key_record(row: Any) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id, tenant=row.tenant, models=tuple(json.loads(row.models)),
        rate=row.rate, burst=row.burst,
        quota=Quota(row.quota, row.quota_period) if row.quota is not None else None,
        salt=row.salt, key_hash=row.key_hash, created_at=row.created_at,
        created_by=row.created_by, revoked_at=row.revoked_at,
        tokens_per_minute=row.tokens_per_minute,
        token_quota=(Quota(row.token_quota, row.token_quota_period, "tokens")
                     if row.token_quota is not None else None))


def _agreement(row: Any) -> Agreement:
    return Agreement(row.model, row.version, stored_terms(row.terms), row.digest,
                     row.published_at)


def _acceptance(row: Any) -> Acceptance:
    return Acceptance(row.tenant, row.model, row.version, row.accepted_at, row.accepted_by,
                      bool(row.log_payloads))


class AccessStore(UsageQueries):
    """Reads and atomic writes (one transaction each) on the access database at ``url``;
    usage is read and added through :class:`maas.access.usage.UsageQueries`."""

    def __init__(self, url: str):
        self.url = url
        try:
            self.engine = engine(url)
        except sa.exc.SQLAlchemyError as exc:
            raise AccessError(f"access.store {shown(url)!r} cannot be opened: {exc}; set "
                              f"access.store to a reachable database (sqlite:///PATH or "
                              f"postgresql+psycopg://user:password@host:port/db)") from None

    # ---- keys ----

    def create_key(self, tenant: str, models: Iterable[str], rate: float | None = None,
                   burst: int | None = None, quota: Quota | None = None,
                   created_by: str = "", tokens_per_minute: int | None = None,
                   token_quota: Quota | None = None) -> tuple[str, KeyRecord]:
        """A new key for ``tenant`` (created if new): (the key, shown only now; its record).
        ``tokens_per_minute`` and ``token_quota`` limit LLM prompt + completion tokens."""
        if not re.fullmatch(TENANT_PATTERN, tenant):
            raise AccessError(f"tenant {tenant!r}: use 1-63 letters, digits, '.', '_' or '-', "
                              f"starting with a letter or digit")
        scope = sorted(set(models))
        if not scope:
            raise AccessError("models: name at least one model, or '*' for every model")
        if burst is not None and (rate is None or burst < 1):
            raise AccessError("burst: needs a rate, and must be at least 1")
        if tokens_per_minute is not None and tokens_per_minute < 1:
            raise AccessError(f"tokens per minute: must be at least 1, got {tokens_per_minute}")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        now = time.time()
        row = {"key_id": key_id, "tenant": tenant, "models": json.dumps(scope), "rate": rate,
               "burst": burst, "quota": quota.limit if quota else None,
               "quota_period": quota.period if quota else None, "salt": salt,
               "key_hash": key_digest(salt, secret), "created_at": now, "created_by": created_by,
               "revoked_at": None, "tokens_per_minute": tokens_per_minute,
               "token_quota": token_quota.limit if token_quota else None,
               "token_quota_period": token_quota.period if token_quota else None}
        with self.engine.begin() as conn:
            # An upsert, not a read then an insert: two first keys of a tenant made at once
            # (two CLIs, two replicas) both inserted it, and the second failed on the primary
            # key, on SQLite and PostgreSQL alike (test_access_concurrency.py).
            conn.execute(insert_for(conn, tenants).values(name=tenant, created_at=now)
                         .on_conflict_do_nothing(index_elements=[tenants.c.name]))
            conn.execute(api_keys.insert().values(**row))
        record = self.key(key_id)
        assert record is not None  # just written, in a committed transaction
        return f"{KEY_PREFIX}{key_id}_{secret}", record

    def key(self, key_id: str) -> KeyRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(api_keys.select().where(api_keys.c.key_id == key_id)).first()
        return _key_record(row) if row else None

    def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        query = api_keys.select().order_by(api_keys.c.created_at)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [_key_record(row) for row in conn.execute(query)]

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke ``key_id`` (a key id or the key's printed prefix); revoking twice is fine."""
        key_id = key_id_of(key_id)
        with self.engine.begin() as conn:
            conn.execute(api_keys.update().where(api_keys.c.key_id == key_id,
                                                 api_keys.c.revoked_at.is_(None))
                         .values(revoked_at=time.time()))
        record = self.key(key_id)
        if record is None:
            raise AccessError(f"no key with id {key_id!r}; `maas keys list` shows the ids")
        return record

    # ---- agreements ----

    def publish(self, model: str, terms: AgreementConfig, only_new: bool = False
                ) -> tuple[Agreement, bool]:
        """Record ``terms`` as ``model``'s current agreement: (agreement, whether that made a
        new version). Terms that differ from the current version's make the next version.
        ``only_new``: terms that any earlier version had are not published again (a replica
        started from an older serve config must not turn the terms back)."""
        digest = terms_digest(terms)
        for _ in range(5):  # two publishers racing for the same next version: one retries
            current = self.agreement(model)
            if current is not None and current.digest == digest:
                return current, False
            if only_new and current is not None and any(
                    a.digest == digest for a in self.agreement_versions(model)):
                return current, False
            version = 1 if current is None else current.version + 1
            try:
                with self.engine.begin() as conn:
                    conn.execute(agreements.insert().values(
                        model=model, version=version, digest=digest, published_at=time.time(),
                        terms=json.dumps(terms.model_dump(mode="json"), sort_keys=True)))
                return self.agreement(model), True  # type: ignore[return-value]
            except sa.exc.IntegrityError:
                continue
        raise AccessError(f"agreement for {model!r} could not be published: concurrent writers")

    def agreement(self, model: str, version: int | None = None) -> Agreement | None:
        """``model``'s agreement ``version``, or its current (newest) one."""
        query = agreements.select().where(agreements.c.model == model)
        query = (query.where(agreements.c.version == version) if version is not None
                 else query.order_by(agreements.c.version.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _agreement(row) if row else None

    def agreement_versions(self, model: str) -> list[Agreement]:
        query = (agreements.select().where(agreements.c.model == model)
                 .order_by(agreements.c.version))
        with self.engine.connect() as conn:
            return [_agreement(row) for row in conn.execute(query)]

    def accept(self, tenant: str, model: str, version: int, accepted_by: str,
               log_payloads: bool = True) -> Acceptance:
        """Record that ``tenant`` accepts version ``version`` of ``model``'s agreement, which
        must be the current one. ``log_payloads`` False: never log this tenant's payloads,
        whatever the terms allow."""
        current = self.agreement(model)
        if current is None:
            raise AccessError(f"model {model!r} has no published agreement; declare "
                              f"models[].agreement in deploy.yaml")
        if version != current.version:
            raise AccessError(f"agreement version {version} of {model!r} is not the current one; "
                              f"accept version {current.version} (`maas agreements show {model}`)")
        with self.engine.begin() as conn:
            known = sa.select(tenants.c.name).where(tenants.c.name == tenant)
            if conn.execute(known).first() is None:
                raise AccessError(f"no tenant {tenant!r}; `maas keys create --tenant {tenant}` "
                                  f"creates it with its first key")
            accepted = {"accepted_at": time.time(), "accepted_by": accepted_by,
                        "log_payloads": log_payloads}
            # Accepting again replaces the acceptance in one statement: after a delete then an
            # insert, two accepting at once could both insert, and the second would fail on the
            # primary key.
            conn.execute(insert_for(conn, acceptances).values(
                tenant=tenant, model=model, version=version, **accepted).on_conflict_do_update(
                index_elements=list(acceptances.primary_key), set_=accepted))
        return self.acceptances(model=model, tenant=tenant)[-1]

    def acceptances(self, model: str | None = None, tenant: str | None = None) -> list[Acceptance]:
        query = acceptances.select().order_by(acceptances.c.accepted_at)
        if model is not None:
            query = query.where(acceptances.c.model == model)
        if tenant is not None:
            query = query.where(acceptances.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [_acceptance(row) for row in conn.execute(query)]


def publish_agreements(store: AccessStore, models: Iterable[ModelConfig]
                       ) -> list[tuple[Agreement, bool]]:
    """Publish the agreement of every model that declares one: (agreement,
    whether it is a new version) each. deploy.yaml is where terms are written; the store keeps
    every version that was ever published, and who accepted which."""
    return [store.publish(m.name, m.agreement) for m in models if m.agreement is not None]


def onboard(store: AccessStore, models: list[ModelConfig], tenant: str, accepted_by: str,
            log_payloads: bool = False, rate: float | None = None, quota: Quota | None = None
            ) -> tuple[str, KeyRecord, list[Acceptance]]:
    """A key for ``tenant`` scoped to ``models``, with each model's current
    agreement accepted by ``accepted_by``: (key, its record, the acceptances)."""
    published = publish_agreements(store, models)
    key, record = store.create_key(tenant, [m.name for m in models], rate=rate, quota=quota,
                                   created_by=accepted_by)
    accepted = [store.accept(tenant, agreement.model, agreement.version, accepted_by,
                             log_payloads) for agreement, _ in published]
    return key, record, accepted
