"""One engine per access-store URL, its schema brought up to this release's on first use.

    engine("sqlite:////home/me/.maas/access.db")                 # the default: one machine
    engine("postgresql+psycopg://maas:secret@db:5432/maas")      # pip install 'maas[postgres]'

Two backends, because the store's writes rely on both of theirs: an upsert that adds to a
usage row atomically (``INSERT ... ON CONFLICT DO UPDATE``), and a lock that lets one process
migrate while the others wait (``maas.access.migrate``). SQLite serves the processes of one
machine (WAL mode); PostgreSQL serves replicas on several. Any other URL is refused rather
than run without them.
"""

from __future__ import annotations

import sqlite3
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from maas.access.migrate import upgrade
from maas.access.records import AccessError

BACKENDS = ("sqlite", "postgresql")
POSTGRES_HINT = ("pip install 'maas[postgres]' and write the URL as "
                 "postgresql+psycopg://user:password@host:port/db")


def shown(url: str) -> str:
    """``url`` as messages and logs may show it: the password masked."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url.split("@")[-1]  # not a URL: at least no user:password part


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    # WAL: replicas write usage while the CLI and other replicas read, without blocking them.
    # Turning a file to WAL takes its exclusive lock, and of two connections doing it at once
    # SQLite answers one "database is locked" at once, without waiting its busy timeout (two
    # processes opening a new or pre-WAL store: 2 of 80 opens failed so). That one tries
    # again, and finds the file in WAL mode, which stays.
    deadline = time.monotonic() + 30.0
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cursor.close()


def _create(url: str) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise AccessError(f"access.store {shown(url)!r} is not a database URL: write "
                          f"sqlite:///PATH or postgresql+psycopg://user:password@host:port/db"
                          ) from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise AccessError(f"access.store {shown(url)!r}: {backend} is not supported; use "
                          f"sqlite:///PATH (one machine) or postgresql+psycopg://... (replicas "
                          f"on several machines)")
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        made = sa.create_engine(parsed, connect_args={"timeout": 30})
        sa.event.listen(made, "connect", _sqlite_pragmas)
        return made
    try:
        # pre_ping: a pooled connection the server closed (restart, idle timeout) is replaced
        # instead of failing the replica's next usage write.
        return sa.create_engine(parsed, pool_pre_ping=True)
    except ImportError as exc:
        raise AccessError(f"access.store {shown(url)!r} needs the PostgreSQL driver "
                          f"{exc.name or parsed.get_driver_name()!r}, which is not installed: "
                          f"{POSTGRES_HINT}") from None


@lru_cache(maxsize=8)
def engine(url: str) -> sa.Engine:
    """The process's engine for ``url``, the store created or migrated to this release's
    schema (``maas.access.migrate.upgrade``; refused if a newer maas wrote it)."""
    made = _create(url)
    try:
        upgrade(made, shown(url))
    except BaseException:
        made.dispose()
        raise
    return made


def insert_for(conn: sa.Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT on ``table`` with the backend's ``on_conflict_do_update`` and
    ``on_conflict_do_nothing`` (PostgreSQL and SQLite spell ON CONFLICT alike, and
    SQLAlchemy builds each through its own dialect)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
