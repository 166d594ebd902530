"""The access database's tables, and one engine per URL (SQLite in WAL mode, or any
SQLAlchemy URL such as PostgreSQL).

Columns added after a table first shipped are nullable or have a server default: opening a
store written by an older maas adds them (maas.access.migrate), and an older replica still
running against the upgraded store keeps writing rows without them."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from maas.access.migrate import add_missing_columns

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
    sa.Column("revoked_at", sa.Float),
    # added for LLM keys (tokens are prompt + completion):
    sa.Column("tokens_per_minute", sa.Integer),
    sa.Column("token_quota", sa.Integer), sa.Column("token_quota_period", sa.String(8)))
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
    sa.Column("latency_ms", sa.Float, nullable=False),  # summed: mean = latency_ms / requests
    # added for LLM requests, the engine's counts:
    sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"))

UsageKey = tuple[int, str, str, str, str, int]  # minute, tenant, key_id, model, version, status


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL: replicas write usage while the CLI and other replicas read, without blocking them.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@lru_cache(maxsize=8)
def engine(url: str) -> sa.Engine:
    """The process's engine for ``url``, every table created if missing and every column
    added since the store was written (idempotent)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        made = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(made, "connect", _sqlite_pragmas)
    else:
        made = sa.create_engine(url, pool_pre_ping=True)
    meta.create_all(made)
    add_missing_columns(made, meta)
    return made
