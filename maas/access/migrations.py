"""The access store's schema versions, oldest first, and how to get from each to the next.

Version 1 is the first release's tables (tenants, keys, agreements, acceptances, usage); every
store written before versioning has them. A change to ``maas.access.tables`` is a new entry
here, with the next number: ``maas.access.migrate`` applies it once per store, in a
transaction. A migration's DDL is written out as it was when it shipped (never built from
``tables``, which moves on), so it does the same on every store whenever it runs.

Migrations 2-4 also run on stores written before versioning, which may already have what they
add (the releases before versioning added columns on their own): they add only what is missing.
Later migrations run only on versioned stores and need not check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

BASELINE = 1


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sa.Connection], None]


def _columns(conn: sa.Connection, table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(conn).get_columns(table)}


def _add_columns(conn: sa.Connection, table: str, columns: dict[str, str]) -> None:
    """``ALTER TABLE table ADD COLUMN name spec`` for each column ``table`` lacks (both
    backends add a nullable or defaulted column without rewriting the rows)."""
    present = _columns(conn, table)
    for name, spec in columns.items():
        if name not in present:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {spec}")


def token_limits(conn: sa.Connection) -> None:
    """LLM keys' token limits and the usage table's token counts (the LLM release)."""
    _add_columns(conn, "maas_api_keys", {"tokens_per_minute": "INTEGER",
                                         "token_quota": "INTEGER",
                                         "token_quota_period": "VARCHAR(8)"})
    # DEFAULT '0', quoted: as that release wrote it (tables' server_default="0" renders so).
    _add_columns(conn, "maas_usage", {"prompt_tokens": "INTEGER DEFAULT '0' NOT NULL",
                                      "completion_tokens": "INTEGER DEFAULT '0' NOT NULL"})


_tuning = sa.MetaData()  # the fine-tuning tables as version 3 made them
sa.Table(
    "maas_files", _tuning,
    sa.Column("file_id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False), sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False), sa.Column("deleted_at", sa.Float))
sa.Table(
    "maas_tuning_jobs", _tuning,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("base", sa.String(64), nullable=False), sa.Column("suffix", sa.String(64)),
    sa.Column("training_file", sa.String(40), nullable=False),
    sa.Column("validation_file", sa.String(40)),
    sa.Column("hyperparameters", sa.Text, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("app_name", sa.String(64), nullable=False),
    sa.Column("fine_tuned_model", sa.String(255)), sa.Column("error", sa.Text),
    sa.Column("trained_tokens", sa.Integer),
    sa.Column("created_at", sa.Float, nullable=False), sa.Column("finished_at", sa.Float))
sa.Table(
    "maas_tuning_events", _tuning,
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("message", sa.Text, nullable=False), sa.Column("data", sa.Text))


def fine_tuning(conn: sa.Connection) -> None:
    """Tenants' uploaded files, fine-tuning jobs and their events (the fine-tuning release)."""
    _tuning.create_all(conn)  # checkfirst: the ones a pre-versioning store has are kept


def wide_integers(conn: sa.Connection) -> None:
    """Quotas, token limits and the usage table's minute as 64-bit integers: PostgreSQL's
    INTEGER stops at 2**31 - 1 (a token quota of 3 billion a month failed to store; epoch
    seconds pass it in 2038). SQLite stores every integer in up to 64 bits already: nothing
    to do there. On PostgreSQL the usage table is rewritten once, under its lock."""
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql("ALTER TABLE maas_api_keys ALTER COLUMN quota TYPE BIGINT, "
                         "ALTER COLUMN tokens_per_minute TYPE BIGINT, "
                         "ALTER COLUMN token_quota TYPE BIGINT")
    conn.exec_driver_sql("ALTER TABLE maas_usage ALTER COLUMN minute TYPE BIGINT")


MIGRATIONS = {m.version: m for m in (
    Migration(2, "token limits and token usage", token_limits),
    Migration(3, "fine-tuning files, jobs and events", fine_tuning),
    Migration(4, "64-bit quotas, token limits and usage minutes", wide_integers),
)}
NEWEST = max(MIGRATIONS)
