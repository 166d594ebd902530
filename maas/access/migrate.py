"""Versioned schema migrations of the access store: each applied once, in order, under a lock.

    AccessStore("postgresql+psycopg://maas:secret@db/maas")   # opening a store is enough

The table ``maas_schema`` records every version a store is at, with its name, when and by
which maas release it was applied; the store's version is the highest. Opening a store:

- new (no maas table): every table is created as ``maas.access.tables`` defines it, and
  recorded as the newest version, in one transaction;
- written before versioning (maas tables, no ``maas_schema``): recognised as version 1, the
  first release's tables, then migrated like any other; migrations 2-4 tolerate what the
  pre-versioning releases had already added (columns, tables);
- older: each missing migration runs in its own transaction with its version row, so a failed
  one leaves the store at the last that succeeded, never half-way through one;
- newer than this release knows: refused (AccessError naming the fix), never used.

Two replicas opening an old store at once must not both migrate it. Each migration's
transaction first takes the store's lock and reads the version again: PostgreSQL's
``pg_advisory_xact_lock`` (released at commit or rollback; DDL is transactional there), and
SQLite's ``BEGIN IMMEDIATE`` (the database's one write lock, waited for up to its 30 s busy
timeout). The process that waited finds the work done and goes on.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError, version

import sqlalchemy as sa

from maas.access.migrations import BASELINE, MIGRATIONS, NEWEST
from maas.access.records import AccessError
from maas.access.tables import meta

log = logging.getLogger(__name__)

SCHEMA_TABLE = "maas_schema"
# Any fixed number, the same in every maas process: the lock names the store's migrations.
LOCK_ID = 0x6D616173  # "maas"
schema = sa.Table(
    SCHEMA_TABLE, sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),  # epoch seconds
    sa.Column("release", sa.String(32), nullable=False))  # the maas release that applied it


def _release() -> str:
    try:
        return version("maas")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def stored_version(conn: sa.Connection) -> int | None:
    """The store's schema version; None when it has no version table (new, or written
    before versioning)."""
    if not sa.inspect(conn).has_table(SCHEMA_TABLE):
        return None
    return conn.execute(sa.select(sa.func.max(schema.c.version))).scalar_one()


def _lock(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": LOCK_ID})
    else:  # sqlite (maas.access.database refuses the rest)
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _record(conn: sa.Connection, number: int, name: str) -> None:
    conn.execute(schema.insert().values(version=number, name=name, applied_at=time.time(),
                                        release=_release()))


def _start(conn: sa.Connection) -> int:
    """Give a store without a version table one: the version it is at now."""
    schema.create(conn)
    if sa.inspect(conn).has_table("maas_tenants"):
        _record(conn, BASELINE, "a store written before versioning, recognised")
        return BASELINE
    meta.create_all(conn)
    _record(conn, NEWEST, f"created at version {NEWEST}")
    return NEWEST


def _refuse_newer(found: int | None, where: str) -> None:
    if found is not None and found > NEWEST:
        raise AccessError(f"access store {where} is at schema version {found}, newer than this "
                          f"maas ({_release()}) knows (up to {NEWEST}): a newer maas migrated "
                          f"it. Upgrade maas here to that release (pip install -U maas, or the "
                          f"newer image) instead of using the store with this one")


def _step(engine: sa.Engine, where: str) -> int | None:
    """Under the lock: start versioning or apply the next migration, in one transaction.
    The version applied, or None when the store is at the newest."""
    with engine.begin() as conn:
        _lock(conn)
        found = stored_version(conn)
        _refuse_newer(found, where)
        if found is None:
            started = _start(conn)
            if started == NEWEST:
                log.info("access store %s created at schema version %d", where, NEWEST)
                return NEWEST
            found = started
        if found == NEWEST:
            return None
        migration = MIGRATIONS[found + 1]
        migration.apply(conn)
        _record(conn, migration.version, migration.name)
    log.info("access store %s migrated to version %d: %s", where, migration.version,
             migration.name)
    return migration.version


def upgrade(engine: sa.Engine, where: str = "") -> list[int]:
    """Bring the store of ``engine`` to this release's schema: the versions applied by this
    call (none when another process did it, or it was already there). ``where`` names the
    store in messages (its URL, password masked)."""
    with engine.connect() as conn:  # most opens: already current, and no lock taken
        found = stored_version(conn)
    _refuse_newer(found, where)
    if found == NEWEST:
        return []
    applied: list[int] = []
    while (done := _step(engine, where)) is not None:
        applied.append(done)
        if done == NEWEST:
            break
    return applied
