"""The access store's versioned migrations, on both backends (``store_url``: a SQLite file and a
database on the session's PostgreSQL server): stores written before versioning, as three
earlier releases wrote them, are upgraded in place with their rows; two processes opening one
at once migrate it once; a store from a newer maas is refused."""

import logging
import multiprocessing

import pytest
import sqlalchemy as sa

from maas.access import AccessError, AccessStore, Quota, parse_token_quota
from maas.access.database import engine as cached_engine
from maas.access.migrate import SCHEMA_TABLE, schema, stored_version
from maas.access.migrations import NEWEST

pytestmark = pytest.mark.unit

# The first release's tables (maas/access.py, the "Govern" commit), as SQLAlchemy created them.
FIRST = """
CREATE TABLE maas_tenants (name VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL,
    PRIMARY KEY (name));
CREATE TABLE maas_api_keys (key_id VARCHAR(12) NOT NULL, tenant VARCHAR(64) NOT NULL,
    models TEXT NOT NULL, rate FLOAT, burst INTEGER, quota INTEGER, quota_period VARCHAR(8),
    salt VARCHAR(32) NOT NULL, key_hash VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL,
    created_by VARCHAR(200) NOT NULL, revoked_at FLOAT, PRIMARY KEY (key_id),
    FOREIGN KEY(tenant) REFERENCES maas_tenants (name));
CREATE TABLE maas_agreements (model VARCHAR(64) NOT NULL, version INTEGER NOT NULL,
    terms TEXT NOT NULL, digest VARCHAR(64) NOT NULL, published_at FLOAT NOT NULL,
    PRIMARY KEY (model, version));
CREATE TABLE maas_acceptances (tenant VARCHAR(64) NOT NULL, model VARCHAR(64) NOT NULL,
    version INTEGER NOT NULL, accepted_at FLOAT NOT NULL, accepted_by VARCHAR(200) NOT NULL,
    log_payloads BOOLEAN NOT NULL, PRIMARY KEY (tenant, model, version));
CREATE TABLE maas_usage (minute INTEGER NOT NULL, tenant VARCHAR(64) NOT NULL,
    key_id VARCHAR(12) NOT NULL, model VARCHAR(64) NOT NULL, version VARCHAR(16) NOT NULL,
    status INTEGER NOT NULL, requests INTEGER NOT NULL, rows INTEGER NOT NULL,
    latency_ms FLOAT NOT NULL, PRIMARY KEY (minute, tenant, key_id, model, version, status));
INSERT INTO maas_tenants VALUES ('acme', 1.0);
INSERT INTO maas_api_keys VALUES ('0123456789ab', 'acme', '["digits"]', 5.0, NULL, 10, 'day',
    'salt', 'hash', 1.0, 'alice@host', NULL);
INSERT INTO maas_agreements VALUES ('digits', 1, '{"license": "MIT", "allowed_uses": ["x"]}',
    'd1', 2.0);
INSERT INTO maas_acceptances VALUES ('acme', 'digits', 1, 3.0, 'alice', FALSE);
INSERT INTO maas_usage VALUES (600, 'acme', '0123456789ab', 'digits', '1', 200, 3, 30, 6.0);
"""
# The LLM release added token limits and counts with ALTER TABLE when it opened such a store.
LLM = """
ALTER TABLE maas_api_keys ADD COLUMN tokens_per_minute INTEGER;
ALTER TABLE maas_api_keys ADD COLUMN token_quota INTEGER;
ALTER TABLE maas_api_keys ADD COLUMN token_quota_period VARCHAR(8);
ALTER TABLE maas_usage ADD COLUMN prompt_tokens INTEGER DEFAULT '0' NOT NULL;
ALTER TABLE maas_usage ADD COLUMN completion_tokens INTEGER DEFAULT '0' NOT NULL;
INSERT INTO maas_api_keys VALUES ('ba9876543210', 'acme', '["chat"]', NULL, NULL, NULL, NULL,
    'salt', 'hash', 4.0, 'bob@host', NULL, 600, 2000, 'day');
INSERT INTO maas_usage VALUES (600, 'acme', 'ba9876543210', 'chat', '2', 200, 1, 1, 9.0, 11, 22);
"""
# The fine-tuning release (the last before versioning) created its three tables.
FINE_TUNING = """
CREATE TABLE maas_files (file_id VARCHAR(40) NOT NULL, tenant VARCHAR(64) NOT NULL,
    filename VARCHAR(255) NOT NULL, purpose VARCHAR(32) NOT NULL, bytes INTEGER NOT NULL,
    rows INTEGER NOT NULL, sha256 VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL,
    expires_at FLOAT NOT NULL, deleted_at FLOAT, PRIMARY KEY (file_id));
CREATE INDEX ix_maas_files_tenant ON maas_files (tenant);
CREATE TABLE maas_tuning_jobs (job_id VARCHAR(40) NOT NULL, tenant VARCHAR(64) NOT NULL,
    base VARCHAR(64) NOT NULL, suffix VARCHAR(64), training_file VARCHAR(40) NOT NULL,
    validation_file VARCHAR(40), hyperparameters TEXT NOT NULL, seed INTEGER NOT NULL,
    status VARCHAR(16) NOT NULL, app_name VARCHAR(64) NOT NULL,
    fine_tuned_model VARCHAR(255), error TEXT, trained_tokens INTEGER,
    created_at FLOAT NOT NULL, finished_at FLOAT, PRIMARY KEY (job_id));
CREATE INDEX ix_maas_tuning_jobs_tenant ON maas_tuning_jobs (tenant);
CREATE TABLE maas_tuning_events (event_id {serial} NOT NULL, job_id VARCHAR(40) NOT NULL,
    created_at FLOAT NOT NULL, level VARCHAR(8) NOT NULL, message TEXT NOT NULL, data TEXT,
    PRIMARY KEY (event_id));
CREATE INDEX ix_maas_tuning_events_job_id ON maas_tuning_events (job_id);
INSERT INTO maas_files VALUES ('file-1', 'acme', 'train.jsonl', 'fine-tune', 10, 2, 'ab', 5.0,
    99.0, NULL);
"""
RELEASES = {"first": FIRST, "llm": FIRST + LLM, "fine-tuning": FIRST + LLM + FINE_TUNING}


def _write_old(url: str, script: str) -> None:
    """``script`` run with plain SQLAlchemy, as the earlier release's store holds it."""
    made = sa.create_engine(url)
    serial = "SERIAL" if made.dialect.name == "postgresql" else "INTEGER"
    with made.begin() as conn:
        for statement in script.replace("{serial}", serial).split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    made.dispose()


def _versions(store: AccessStore) -> list[tuple[int, str]]:
    with store.engine.connect() as conn:
        return [(r.version, r.release) for r in conn.execute(schema.select()
                                                             .order_by(schema.c.version))]


def _schema(engine: sa.Engine) -> dict:
    """Every table's columns (nullable, default; types too on PostgreSQL, where they are
    enforced), primary key, indexes and foreign keys."""
    inspector = sa.inspect(engine)
    typed = engine.dialect.name == "postgresql"
    return {table: ({c["name"]: (c["nullable"], c["default"], str(c["type"]) if typed else "")
                     for c in inspector.get_columns(table)},
                    inspector.get_pk_constraint(table)["constrained_columns"],
                    sorted(i["column_names"] for i in inspector.get_indexes(table)),
                    [f["referred_table"] for f in inspector.get_foreign_keys(table)])
            for table in inspector.get_table_names()}


@pytest.mark.parametrize("release", list(RELEASES))
def test_a_store_of_an_earlier_release_is_upgraded_in_place_with_its_rows(store_url, release):
    _write_old(store_url, RELEASES[release])
    store = AccessStore(store_url)
    with store.engine.connect() as conn:  # what ran, which release ran it
        history = conn.execute(schema.select().order_by(schema.c.version)).all()
    assert [r.version for r in history] == list(range(1, NEWEST + 1))
    assert history[0].name == "a store written before versioning, recognised"
    assert all(r.release for r in history)
    with store.engine.connect() as conn:
        assert stored_version(conn) == NEWEST
    old_key = store.key("0123456789ab")
    assert (old_key.tenant, old_key.models, old_key.rate, old_key.quota, old_key.created_by,
            old_key.tokens_per_minute, old_key.token_quota) == \
        ("acme", ("digits",), 5.0, Quota(10, "day"), "alice@host", None, None)
    assert store.agreement("digits").terms.license == "MIT"
    (accepted,) = store.acceptances(tenant="acme")
    assert (accepted.version, accepted.accepted_by, accepted.log_payloads) == (1, "alice", False)
    rows = {r.model: r for r in store.usage()}
    assert (rows["digits"].requests, rows["digits"].rows, rows["digits"].mean_latency_ms,
            rows["digits"].prompt_tokens) == (3, 30, 2.0, 0)
    if release != "first":
        assert store.key("ba9876543210").token_quota == Quota(2000, "day", "tokens")
        assert (rows["chat"].prompt_tokens, rows["chat"].completion_tokens) == (11, 22)
    if release == "fine-tuning":
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT filename FROM maas_files")).scalar_one() == \
                "train.jsonl"
    # What the upgraded store is for: token limits (past 2**31 - 1) and token usage.
    _, key = store.create_key("acme", ["chat"], tokens_per_minute=20000,
                              token_quota=parse_token_quota("5000000000/month"))
    assert store.key(key.key_id) == key
    store.add_usage({(660, "acme", key.key_id, "chat", "1", 200): [1, 1, 1.0, 7, 5]})
    with store.engine.begin() as conn:  # an older replica, still running, writes as it did
        conn.exec_driver_sql(
            "INSERT INTO maas_usage (minute, tenant, key_id, model, version, status, requests, "
            "rows, latency_ms) VALUES (720, 'acme', 'k', 'digits', '1', 200, 1, 1, 1.0)")
    assert store.token_quota_used(key.key_id, 0) == 12 and store.quota_used("k", 0) == 1


def test_an_upgraded_store_has_the_schema_of_a_new_one(store_url, tmp_path, request):
    _write_old(store_url, FIRST)
    upgraded = AccessStore(store_url).engine
    if upgraded.dialect.name == "postgresql":
        fresh_url = request.getfixturevalue("postgres").new_database()
    else:
        fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    fresh = AccessStore(fresh_url)
    assert [v for v, _ in _versions(fresh)] == [NEWEST]  # created at the newest
    assert _schema(upgraded) == _schema(fresh.engine)


_barrier = None


def _hold(barrier) -> None:
    global _barrier
    _barrier = barrier


def _open(url: str) -> list[int]:
    """In a process of its own, at the barrier's signal: the store opened; the versions this
    process migrated it to (from its log)."""
    applied: list[int] = []

    class Applied(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "migrated to version" in record.getMessage():
                applied.append(record.args[1])

    logger = logging.getLogger("maas.access.migrate")
    logger.setLevel(logging.INFO)
    logger.addHandler(Applied())
    _barrier.wait(timeout=60)
    AccessStore(url)
    return applied


def test_two_processes_opening_an_old_store_at_once_migrate_it_once(store_url):
    _write_old(store_url, FIRST)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    with context.Pool(2, initializer=_hold, initargs=(barrier,)) as pool:
        applied = pool.map(_open, [store_url] * 2, chunksize=1)
    assert sorted(applied[0] + applied[1]) == list(range(2, NEWEST + 1))  # each once, by one
    store = AccessStore(store_url)
    assert [v for v, _ in _versions(store)] == list(range(1, NEWEST + 1))
    assert store.key("0123456789ab").quota == Quota(10, "day")


def test_a_store_of_a_newer_maas_is_refused_not_used(store_url):
    store = AccessStore(store_url)
    with store.engine.begin() as conn:
        conn.execute(schema.insert().values(version=NEWEST + 1, name="from a newer maas",
                                            applied_at=0.0, release="9.9.9"))
    cached_engine.cache_clear()  # as a process opening it now would
    with pytest.raises(AccessError) as refused:
        AccessStore(store_url)
    message = str(refused.value)
    assert f"schema version {NEWEST + 1}, newer than this maas" in message
    assert f"(up to {NEWEST})" in message and "Upgrade maas" in message
    password = sa.make_url(store_url).password
    assert password is None or password not in message
    with store.engine.connect() as conn:  # and nothing was changed
        assert stored_version(conn) == NEWEST + 1
        assert conn.execute(sa.select(sa.func.count()).select_from(
            sa.table(SCHEMA_TABLE))).scalar_one() == 2  # the newest it was made at, and ours
