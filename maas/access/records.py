"""What the access store holds, as values: keys, agreements, acceptances, usage rows, and the
rate and quota notation people type (``50/s``, ``100000/day``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from maas.config import AgreementConfig
from maas.errors import MaasError

KEY_PREFIX = "maas_"
ALL_MODELS = "*"
PERIODS = {"minute": 60, "hour": 3600, "day": 86400, "month": None}  # month: calendar month
RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
              "h": 3600.0, "hour": 3600.0}


class AccessError(MaasError):
    """A store operation that cannot be done; the message says why and what to do."""

    status = 400


ANONYMOUS = "-"  # tenant and key of requests refused before a key was recognised


class Refusal(MaasError):
    """An access refusal (401, 403 or 429; 400 for a request larger than a token limit could
    ever grant), with the tenant it was refused to: a replica meters it as that tenant's."""

    def __init__(self, status: int, message: str, tenant: str = ANONYMOUS,
                 key_id: str = ANONYMOUS, headers: dict[str, str] | None = None,
                 param: str | None = None):
        super().__init__(message, status=status, headers=headers, param=param)
        self.tenant = tenant
        self.key_id = key_id


@dataclass(frozen=True)
class Quota:
    limit: int
    period: str  # a key of PERIODS
    unit: str = "requests"  # or "tokens" (LLM prompt + completion tokens)

    def __str__(self) -> str:
        return f"{self.limit} {self.unit}/{self.period}"


def parse_rate(text: str) -> float:
    """``50/s``, ``3000/min``, ``100/hour`` -> requests per second."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*", text or "")
    if not match or match.group(2) not in RATE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"rate {text!r}: write it as N/s, N/min or N/hour with N > 0, "
                         f"e.g. 50/s")
    return float(match.group(1)) / RATE_UNITS[match.group(2)]


def parse_quota(text: str, unit: str = "requests") -> Quota:
    """``100000/day`` -> Quota(100000, 'day'); periods: minute, hour, day, month (UTC)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", text or "")
    if not match or match.group(2) not in PERIODS or int(match.group(1)) < 1:
        raise ValueError(f"{'token ' if unit == 'tokens' else ''}quota {text!r}: write it as "
                         f"N/minute, N/hour, N/day or N/month with a whole N >= 1, e.g. "
                         f"100000/day")
    return Quota(int(match.group(1)), match.group(2), unit)


def parse_token_quota(text: str) -> Quota:
    """``1000000/day`` -> a quota of LLM tokens (prompt + completion) per UTC period."""
    return parse_quota(text, "tokens")


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


def key_digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def key_id_of(text: str) -> str:
    """A key id from an id or a key's printed prefix (``maas_<id>_...``)."""
    return text.removeprefix(KEY_PREFIX).split("_")[0]


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
    tokens_per_minute: int | None = None  # LLM prompt + completion tokens
    token_quota: Quota | None = None  # unit "tokens"

    def verifies(self, secret: str) -> bool:
        return hmac.compare_digest(key_digest(self.salt, secret), self.key_hash)

    def allows(self, model: str) -> bool:
        return ALL_MODELS in self.models or model in self.models

    @property
    def label(self) -> str:
        """How refusals name the key without showing it."""
        return f"key {KEY_PREFIX}{self.key_id}_... of tenant {self.tenant!r}"

    @property
    def capacity(self) -> int:
        """Requests a key may send at once after an idle spell: ``burst``, else a fifth of a
        second's worth (so that 20/s for 10 s lets through about 200, not 220)."""
        if self.rate is None:
            return 0
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate / 5))

    def public(self) -> dict[str, Any]:
        """The JSON that ``maas keys list --json`` prints (never the hash or salt)."""
        return {"key_id": self.key_id, "prefix": f"{KEY_PREFIX}{self.key_id}_",
                "tenant": self.tenant, "models": list(self.models), "rate_per_s": self.rate,
                "burst": self.capacity or None, "quota": str(self.quota) if self.quota else None,
                "tokens_per_minute": self.tokens_per_minute,
                "token_quota": str(self.token_quota) if self.token_quota else None,
                "created_at": iso(self.created_at), "created_by": self.created_by,
                "revoked_at": iso(self.revoked_at)}


@dataclass(frozen=True)
class Agreement:
    model: str
    version: int
    terms: AgreementConfig
    digest: str
    published_at: float

    def public(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version,
                "terms": self.terms.model_dump(mode="json"),
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


@dataclass(frozen=True)
class UsageRow:
    """Usage summed per tenant, model, version and status."""

    tenant: str
    model: str
    version: str
    status: int
    requests: int
    rows: int
    mean_latency_ms: float
    prompt_tokens: int = 0  # LLM requests: the engine's counts
    completion_tokens: int = 0
    start: int | None = None  # a time series' period (epoch seconds of its first minute)


def stored_terms(text: str) -> AgreementConfig:
    """Terms as the store holds them (JSON of AgreementConfig). Fields this release does not
    know, written by a newer maas sharing the store, are left out: a newer CLI must not stop
    this release's replicas from reading the agreement they enforce."""
    return AgreementConfig.model_validate(_known_fields(AgreementConfig, json.loads(text)))


def _known_fields(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    known = {}
    for name, field in model.model_fields.items():
        if name in data:
            inner = field.annotation
            nested = isinstance(inner, type) and issubclass(inner, BaseModel)
            known[name] = _known_fields(inner, data[name]) if nested else data[name]
    return known


# Clauses added after agreements were first published: while unset they are left out of the
# digest, so upgrading maas does not make a new version of every agreement to accept again.
ADDED_CLAUSES = ("training_data",)


def terms_digest(terms: AgreementConfig) -> str:
    written = terms.model_dump(mode="json")
    for clause in ADDED_CLAUSES:
        if written.get(clause) is None:
            written.pop(clause, None)
    canonical = json.dumps(written, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
