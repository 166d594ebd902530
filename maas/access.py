"""The access store: tenants, API keys, model agreements and their acceptances, usage.

    maas keys create --tenant acme --models digits --rate 50/s --quota 100000/day
    maas agreements accept --tenant acme --model digits --version 1
    maas usage --tenant acme

One SQLAlchemy database (SQLite under ``state_dir`` by default, any SQLAlchemy URL such as
PostgreSQL for a team) shared by the CLI, the pipeline and every Serve replica. Keys are random,
shown once, and stored only as a salted SHA-256: they carry 256 random bits, so a slow password
hash would add latency to every request without making a guess any less hopeless.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable

import sqlalchemy as sa

from maas.config import TENANT_PATTERN, AgreementConfig

KEY_PREFIX = "maas_"
ALL_MODELS = "*"
PERIODS = {"minute": 60, "hour": 3600, "day": 86400, "month": None}  # month: calendar month
RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
              "h": 3600.0, "hour": 3600.0}
# Requests refused before they reach a model use no quota (nor does the quota count them).
UNCOUNTED_STATUSES = (401, 403, 429)


class AccessError(Exception):
    """A store operation that cannot be done; the message says why and what to do."""


# ---- limits ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Quota:
    limit: int
    period: str  # a key of PERIODS

    def __str__(self) -> str:
        return f"{self.limit} requests/{self.period}"


def parse_rate(text: str) -> float:
    """``50/s``, ``3000/min``, ``100/hour`` -> requests per second."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*", text or "")
    if not match or match.group(2) not in RATE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"rate {text!r}: write it as N/s, N/min or N/hour with N > 0, "
                         f"e.g. 50/s")
    return float(match.group(1)) / RATE_UNITS[match.group(2)]


def parse_quota(text: str) -> Quota:
    """``100000/day`` -> Quota(100000, 'day'); periods: minute, hour, day, month (UTC)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", text or "")
    if not match or match.group(2) not in PERIODS or int(match.group(1)) < 1:
        raise ValueError(f"quota {text!r}: write it as N/minute, N/hour, N/day or N/month with "
                         f"a whole N >= 1, e.g. 100000/day")
    return Quota(int(match.group(1)), match.group(2))


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """The UTC calendar window of ``period`` holding ``now``: (start, end) epoch seconds."""
    length = PERIODS[period]
    if length is not None:
        start = math.floor(now / length) * length
        return float(start), float(start + length)
    day = datetime.fromtimestamp(now, timezone.utc)
    start = datetime(day.year, day.month, 1, tzinfo=timezone.utc)
    end = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=timezone.utc)
    return start.timestamp(), end.timestamp()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- keys -----------------------------------------------------------------------------------

def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """``maas_<id>_<secret>`` -> (id, secret); None for anything else."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX):].partition("_")
    if not sep or len(key_id) != 12 or len(secret) < 32:
        return None
    return key_id, secret


@dataclass(frozen=True)
class KeyRecord:
    """A key as stored: everything but the key itself."""

    key_id: str
    tenant: str
    models: tuple[str, ...]
    rate: float | None  # requests per second
    burst: int | None
    quota: Quota | None
    salt: str
    key_hash: str
    created_at: float
    created_by: str
    revoked_at: float | None

    def verifies(self, secret: str) -> bool:
        return hmac.compare_digest(_digest(self.salt, secret), self.key_hash)

    def allows(self, model: str) -> bool:
        return ALL_MODELS in self.models or model in self.models

    @property
    def capacity(self) -> int:
        """Requests a key may send at once after an idle spell: ``burst``, else a fifth of a
        second's worth (so that 20/s for 10 s lets through about 200, not 220)."""
        if self.rate is None:
            return 0
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate / 5))

    def public(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "prefix": f"{KEY_PREFIX}{self.key_id}_", "tenant": self.tenant,
                "models": list(self.models), "rate_per_s": self.rate, "burst": self.capacity or None,
                "quota": str(self.quota) if self.quota else None,
                "created_at": iso(self.created_at), "created_by": self.created_by,
                "revoked_at": iso(self.revoked_at)}


@dataclass(frozen=True)
class Agreement:
    model: str
    version: int
    terms: dict[str, Any]
    digest: str
    published_at: float

    def public(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "terms": self.terms,
                "published_at": iso(self.published_at)}


@dataclass(frozen=True)
class Acceptance:
    tenant: str
    model: str
    version: int
    accepted_at: float
    accepted_by: str
    log_payloads: bool  # the tenant's own choice; the terms must also allow it

    def public(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "model": self.model, "version": self.version,
                "accepted_at": iso(self.accepted_at), "accepted_by": self.accepted_by,
                "log_payloads": self.log_payloads}


def terms_digest(terms: AgreementConfig) -> str:
    canonical = json.dumps(terms.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---- the database ---------------------------------------------------------------------------

meta = sa.MetaData()
tenants = sa.Table(
    "maas_tenants", meta,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False))
api_keys = sa.Table(
    "maas_api_keys", meta,
    sa.Column("key_id", sa.String(12), primary_key=True),
    sa.Column("tenant", sa.String(64), sa.ForeignKey("maas_tenants.name"), nullable=False),
    sa.Column("models", sa.Text, nullable=False),  # JSON list
    sa.Column("rate", sa.Float), sa.Column("burst", sa.Integer),
    sa.Column("quota", sa.Integer), sa.Column("quota_period", sa.String(8)),
    sa.Column("salt", sa.String(32), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("revoked_at", sa.Float))
agreements = sa.Table(
    "maas_agreements", meta,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("terms", sa.Text, nullable=False),  # JSON of AgreementConfig
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("published_at", sa.Float, nullable=False))
acceptances = sa.Table(
    "maas_acceptances", meta,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("accepted_at", sa.Float, nullable=False),
    sa.Column("accepted_by", sa.String(200), nullable=False),
    sa.Column("log_payloads", sa.Boolean, nullable=False))
usage = sa.Table(  # one row per minute, tenant, key, model, version and status
    "maas_usage", meta,
    sa.Column("minute", sa.Integer, primary_key=True),  # epoch seconds of the minute's start
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(12), primary_key=True),
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(16), primary_key=True),
    sa.Column("status", sa.Integer, primary_key=True),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False))  # summed: mean = latency_ms / requests

UsageKey = tuple[int, str, str, str, str, int]  # minute, tenant, key_id, model, version, status


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL: replicas write usage while the CLI and other replicas read, without blocking them.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@lru_cache(maxsize=8)
def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    meta.create_all(engine)  # idempotent: every table is created if missing
    return engine


def _key_record(row: Any) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id, tenant=row.tenant, models=tuple(json.loads(row.models)),
        rate=row.rate, burst=row.burst,
        quota=Quota(row.quota, row.quota_period) if row.quota is not None else None,
        salt=row.salt, key_hash=row.key_hash, created_at=row.created_at,
        created_by=row.created_by, revoked_at=row.revoked_at)


def _agreement(row: Any) -> Agreement:
    return Agreement(row.model, row.version, json.loads(row.terms), row.digest, row.published_at)


def _acceptance(row: Any) -> Acceptance:
    return Acceptance(row.tenant, row.model, row.version, row.accepted_at, row.accepted_by,
                      bool(row.log_payloads))


class AccessStore:
    """Reads and atomic writes (one transaction each) on the access database at ``url``."""

    def __init__(self, url: str):
        self.url = url
        try:
            self.engine = _engine(url)
        except sa.exc.SQLAlchemyError as exc:
            raise AccessError(f"access.store {url!r} cannot be opened: {exc}; set access.store "
                              f"to a reachable SQLAlchemy URL") from None

    # ---- keys ----

    def create_key(self, tenant: str, models: Iterable[str], rate: float | None = None,
                   burst: int | None = None, quota: Quota | None = None,
                   created_by: str = "") -> tuple[str, KeyRecord]:
        """A new key for ``tenant`` (created if new): (the key, shown only now; its record)."""
        if not re.fullmatch(TENANT_PATTERN, tenant):
            raise AccessError(f"tenant {tenant!r}: use 1-63 letters, digits, '.', '_' or '-', "
                              f"starting with a letter or digit")
        scope = sorted(set(models))
        if not scope:
            raise AccessError("models: name at least one model, or '*' for every model")
        if burst is not None and (rate is None or burst < 1):
            raise AccessError("burst: needs a rate, and must be at least 1")
        key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
        now = time.time()
        row = {"key_id": key_id, "tenant": tenant, "models": json.dumps(scope), "rate": rate,
               "burst": burst, "quota": quota.limit if quota else None,
               "quota_period": quota.period if quota else None, "salt": salt,
               "key_hash": _digest(salt, secret), "created_at": now, "created_by": created_by,
               "revoked_at": None}
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(tenants.c.name).where(tenants.c.name == tenant)).first()
            if exists is None:
                conn.execute(tenants.insert().values(name=tenant, created_at=now))
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
        key_id = key_id.removeprefix(KEY_PREFIX).split("_")[0]
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
        query = agreements.select().where(agreements.c.model == model).order_by(agreements.c.version)
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
            if conn.execute(sa.select(tenants.c.name).where(tenants.c.name == tenant)).first() is None:
                raise AccessError(f"no tenant {tenant!r}; `maas keys create --tenant {tenant}` "
                                  f"creates it with its first key")
            conn.execute(acceptances.delete().where(
                acceptances.c.tenant == tenant, acceptances.c.model == model,
                acceptances.c.version == version))
            conn.execute(acceptances.insert().values(
                tenant=tenant, model=model, version=version, accepted_at=time.time(),
                accepted_by=accepted_by, log_payloads=log_payloads))
        return self.acceptances(model=model, tenant=tenant)[-1]

    def acceptances(self, model: str | None = None, tenant: str | None = None) -> list[Acceptance]:
        query = acceptances.select().order_by(acceptances.c.accepted_at)
        if model is not None:
            query = query.where(acceptances.c.model == model)
        if tenant is not None:
            query = query.where(acceptances.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [_acceptance(row) for row in conn.execute(query)]

    # ---- usage ----

    def add_usage(self, counts: dict[UsageKey, list[float]]) -> None:
        """Add ``counts`` ((minute, tenant, key, model, version, status) -> [requests, rows,
        latency ms]) to the usage table, all in one transaction."""
        if not counts:
            return
        with self.engine.begin() as conn:
            for (minute, tenant, key_id, model, version, status), (n, rows, ms) in counts.items():
                match = (usage.c.minute == minute, usage.c.tenant == tenant,
                         usage.c.key_id == key_id, usage.c.model == model,
                         usage.c.version == version, usage.c.status == status)
                updated = conn.execute(usage.update().where(*match).values(
                    requests=usage.c.requests + int(n), rows=usage.c.rows + int(rows),
                    latency_ms=usage.c.latency_ms + ms))
                if updated.rowcount == 0:
                    conn.execute(usage.insert().values(
                        minute=minute, tenant=tenant, key_id=key_id, model=model,
                        version=version, status=status, requests=int(n), rows=int(rows),
                        latency_ms=ms))

    def usage(self, tenant: str | None = None, model: str | None = None,
              since: float | None = None) -> list[dict[str, Any]]:
        """Usage summed per tenant, model, version and status."""
        query = sa.select(usage.c.tenant, usage.c.model, usage.c.version, usage.c.status,
                          sa.func.sum(usage.c.requests).label("requests"),
                          sa.func.sum(usage.c.rows).label("rows"),
                          sa.func.sum(usage.c.latency_ms).label("latency_ms")
                          ).group_by(usage.c.tenant, usage.c.model, usage.c.version,
                                     usage.c.status).order_by(usage.c.tenant, usage.c.model,
                                                              usage.c.version, usage.c.status)
        if tenant is not None:
            query = query.where(usage.c.tenant == tenant)
        if model is not None:
            query = query.where(usage.c.model == model)
        if since is not None:
            query = query.where(usage.c.minute >= math.floor(since / 60) * 60)
        with self.engine.connect() as conn:
            return [{"tenant": r.tenant, "model": r.model, "version": r.version,
                     "status": r.status, "requests": int(r.requests), "rows": int(r.rows),
                     "mean_latency_ms": round(r.latency_ms / r.requests, 3) if r.requests else 0}
                    for r in conn.execute(query)]

    def quota_used(self, key_id: str, since: float) -> int:
        """Requests under ``key_id`` since ``since`` that counted toward its quota."""
        query = sa.select(sa.func.coalesce(sa.func.sum(usage.c.requests), 0)).where(
            usage.c.key_id == key_id, usage.c.minute >= math.floor(since / 60) * 60,
            usage.c.status.not_in(UNCOUNTED_STATUSES))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


# ---- what the CLI and the pipeline do with a deploy.yaml ----------------------------------

def publish_agreements(store: AccessStore, models: Iterable[Any]) -> list[tuple[Agreement, bool]]:
    """Publish the agreement of every model (``ModelConfig``) that declares one: (agreement,
    whether it is a new version) each. deploy.yaml is where terms are written; the store keeps
    every version that was ever published, and who accepted which."""
    return [store.publish(m.name, m.agreement) for m in models if m.agreement is not None]


def onboard(store: AccessStore, models: list[Any], tenant: str, accepted_by: str,
            log_payloads: bool = False, rate: float | None = None, quota: Quota | None = None
            ) -> tuple[str, KeyRecord, list[Acceptance]]:
    """A key for ``tenant`` scoped to ``models`` (ModelConfig), with each model's current
    agreement accepted by ``accepted_by``: (key, its record, the acceptances)."""
    published = publish_agreements(store, models)
    key, record = store.create_key(tenant, [m.name for m in models], rate=rate, quota=quota,
                                   created_by=accepted_by)
    accepted = [store.accept(tenant, agreement.model, agreement.version, accepted_by,
                             log_payloads) for agreement, _ in published]
    return key, record, accepted
