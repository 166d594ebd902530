"""The access store, limits, payload log and their CLI (no Ray). The store's tests run on
both backends (``store_url``): a SQLite file and a database on the session's PostgreSQL
server."""

import json
import os
import re
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from maas.access import (AccessError, AccessStore, Quota, parse_quota, parse_rate, period_bounds,
                         publish_agreements, split_key)
from maas.cli import app
from maas.cli.usage import parse_since
from maas.config import AgreementConfig, DataUsageConfig, ModelConfig, parse_config
from maas.limits import Buckets, lease_size
from maas.payloads import PayloadLog, mask_text, redact

TERMS = AgreementConfig(license="MIT", allowed_uses=["research"],
                        data_usage=DataUsageConfig(log_payloads=True, retention_days=2))


@pytest.fixture
def store(store_url: str) -> AccessStore:
    return AccessStore(store_url)


@pytest.mark.parametrize("text, per_s", [("50/s", 50.0), ("3000/min", 50.0), ("36/hour", 0.01),
                                         (" 2.5 / sec ", 2.5)])
def test_rates_parse_to_requests_per_second(text, per_s):
    assert parse_rate(text) == pytest.approx(per_s)


@pytest.mark.parametrize("text", ["50", "0/s", "-1/s", "5/fortnight", "x/s", ""])
def test_bad_rates_say_how_to_write_one(text):
    with pytest.raises(ValueError, match="N/s, N/min or N/hour"):
        parse_rate(text)


def test_quotas_parse_and_their_periods_are_utc_calendar_windows():
    assert parse_quota("100000/day") == Quota(100000, "day")
    with pytest.raises(ValueError, match="N/minute, N/hour, N/day or N/month"):
        parse_quota("1.5/day")
    noon = datetime(2026, 12, 31, 12, 30, tzinfo=timezone.utc).timestamp()
    start, end = period_bounds("day", noon)
    assert (datetime.fromtimestamp(start, timezone.utc).isoformat(),
            datetime.fromtimestamp(end, timezone.utc).isoformat()) == \
        ("2026-12-31T00:00:00+00:00", "2027-01-01T00:00:00+00:00")
    start, end = period_bounds("month", noon)
    assert datetime.fromtimestamp(end, timezone.utc).isoformat() == "2027-01-01T00:00:00+00:00"


def test_a_key_is_shown_once_and_stored_as_a_salted_hash(store, tmp_path):
    key, record = store.create_key("acme", ["digits"], rate=5.0, quota=Quota(10, "day"))
    key_id, secret = split_key(key)
    assert record.key_id == key_id and record.verifies(secret)
    assert not record.verifies(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    other_key, other = store.create_key("acme", ["digits"])
    assert other.salt != record.salt  # same tenant, fresh salt per key
    from maas.access.tables import meta
    with store.engine.connect() as conn:  # every row of every table
        stored = repr([conn.execute(table.select()).all() for table in meta.sorted_tables])
    assert secret not in stored and record.key_hash in stored
    if store.engine.dialect.name == "sqlite":  # and the file's bytes, its WAL too
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("access.db*"))
        assert secret.encode() not in raw and record.key_hash.encode() in raw
    assert store.keys("acme") == [record, other]
    assert record.capacity == 1  # default burst: a fifth of a second of 5/s, at least 1


@pytest.mark.parametrize("url, fragment", [
    ("postgresql+psycopg://maas:s3cret@127.0.0.1:1/x", "pip install 'maas[postgres]'"),
    ("postgresql://maas:s3cret@127.0.0.1:1/x", "pip install 'maas[postgres]'"),  # psycopg too
    ("mysql+pymysql://maas:s3cret@127.0.0.1:1/x", "mysql is not supported"),
    ("maas:s3cret@db", "not a database URL")])
def test_a_store_that_cannot_work_here_is_refused_naming_the_fix(url, fragment, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as where maas[postgres] is not installed
    with pytest.raises(AccessError, match=re.escape(fragment)) as refused:
        AccessStore(url)
    assert "s3cret" not in str(refused.value)  # the URL's password is never shown


@pytest.mark.parametrize("key", ["", "Bearer x", "maas_short_" + "x" * 40, "maas_0123456789ab",
                                 "maas_0123456789ab_tooshort", "sk_0123456789ab_" + "x" * 43])
def test_malformed_keys_do_not_split(key):
    assert split_key(key) is None


def test_revoking_keeps_the_record_and_is_idempotent(store):
    key, record = store.create_key("acme", ["*"])
    first = store.revoke(record.key_id)
    assert first.revoked_at is not None
    assert store.revoke(f"maas_{record.key_id}_").revoked_at == first.revoked_at
    with pytest.raises(AccessError, match="no key with id"):
        store.revoke("000000000000")


@pytest.mark.parametrize("tenant, models, extra, fragment", [
    ("bad name", ["m"], {}, "tenant 'bad name'"),
    ("ok", [], {}, "name at least one model"),
    ("ok", ["m"], {"burst": 5}, "burst: needs a rate"),
])
def test_bad_key_requests_are_refused_naming_the_field(store, tenant, models, extra, fragment):
    with pytest.raises(AccessError, match=fragment):
        store.create_key(tenant, models, **extra)
    assert store.keys() == []  # nothing half-written


def test_changed_terms_are_a_new_version_that_must_be_accepted_again(store):
    first, new = store.publish("digits", TERMS)
    assert (first.version, new) == (1, True)
    assert store.publish("digits", TERMS) == (first, False)
    store.create_key("acme", ["digits"])
    store.accept("acme", "digits", 1, "alice", log_payloads=False)
    changed = TERMS.model_copy(update={"allowed_uses": ["research", "commercial"]})
    second, new = store.publish("digits", changed)
    assert (second.version, new) == (2, True)
    with pytest.raises(AccessError, match="accept version 2"):
        store.accept("acme", "digits", 1, "alice")
    with pytest.raises(AccessError, match="no tenant 'ghost'"):
        store.accept("ghost", "digits", 2, "alice")
    accepted = store.accept("acme", "digits", 2, "alice")
    assert (accepted.version, accepted.accepted_by, accepted.log_payloads) == (2, "alice", True)
    assert [a.version for a in store.acceptances(model="digits", tenant="acme")] == [1, 2]
    assert [a.version for a in store.agreement_versions("digits")] == [1, 2]


def test_usage_adds_up_and_only_admitted_requests_use_the_quota(store):
    minute = int(time.time() // 60 * 60)
    store.add_usage({(minute, "acme", "k1", "digits", "1", 200): [3, 30, 6.0],
                     (minute, "acme", "k1", "digits", "1", 429): [5, 0, 1.0]})
    store.add_usage({(minute, "acme", "k1", "digits", "1", 200): [2, 20, 4.0],
                     (minute, "beta", "k2", "digits", "1", 400): [1, 0, 1.0]})
    rows = store.usage(tenant="acme")
    assert [(r.status, r.requests, r.rows, r.mean_latency_ms) for r in rows] == \
        [(200, 5, 50, 2.0), (429, 5, 0, 0.2)]
    assert store.quota_used("k1", minute) == 5
    assert store.usage(since=time.time() + 3600) == []


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_grants_its_rate_and_says_when_to_come_back():
    clock = Clock()
    buckets = Buckets(lambda key, since: 0, clock=clock)
    grants = [buckets.acquire("k", 1, 0, rate=10.0, capacity=2, quota=None) for _ in range(3)]
    assert [g.granted for g in grants] == [1, 1, 0]
    assert grants[2].reason == "rate" and grants[2].retry_after_s == pytest.approx(0.1)
    clock.now += 1.0  # 10 tokens more, but the bucket holds 2
    assert buckets.acquire("k", 50, 0, rate=10.0, capacity=2, quota=None).granted == 2
    assert buckets.acquire("k", 1, 2, rate=10.0, capacity=2, quota=None).granted == 1  # returned


def test_a_quota_counts_from_durable_usage_and_hands_out_its_last_tokens_singly():
    used = {"k": 7}
    buckets = Buckets(lambda key, since: used[key], wall=lambda: 86400 * 100 + 5)
    quota = Quota(10, "day")
    grants = [buckets.acquire("k", 20, 0, rate=None, capacity=0, quota=quota) for _ in range(4)]
    assert [g.granted for g in grants] == [1, 1, 1, 0]
    assert grants[3].reason == "quota" and grants[3].quota_resets_at == 86400 * 101
    assert buckets.acquire("k", 1, 1, rate=None, capacity=0, quota=quota).granted == 1


def test_lease_sizes_follow_the_rate_and_shrink_near_the_quota():
    assert lease_size(20.0, None) == 1
    assert lease_size(1000.0, None) == 50
    assert lease_size(None, None) == 20
    assert lease_size(1000.0, 100) == 1


def test_redaction_modes():
    inputs = [{"name": "text", "shape": [2], "datatype": "BYTES",
               "data": ["mail bob@example.com",
                        "call +1 (555) 010-9999, card 4111 1111 1111 1111"]}]
    assert redact(inputs, "none") == inputs
    digest = redact(inputs, "digest")[0]
    assert "data" not in digest and len(digest["sha256"]) == 64
    masked = redact(inputs, "mask_pii")[0]["data"]
    assert masked == ["mail <email>", "call <phone>, card <card>"]
    assert mask_text("no pii here, 42 apples") == "no pii here, 42 apples"


def test_the_payload_log_appends_by_day_and_deletes_what_is_past_retention(tmp_path):
    log = PayloadLog(tmp_path, "digits", DataUsageConfig(log_payloads=True, retention_days=2))
    log.add("acme", "k1", "3", "req-1", [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                                          "data": [0.5, 1.5]}])
    log.flush()
    (path,) = (tmp_path / "digits").glob("*.jsonl")
    record = json.loads(path.read_text())
    assert (record["tenant"], record["id"], record["inputs"][0]["data"]) == ("acme", "req-1",
                                                                             [0.5, 1.5])
    assert path.name.endswith(f".{socket.gethostname()}-{os.getpid()}.jsonl")  # its own file
    old = [tmp_path / "digits" / "2020-01-01.jsonl",  # as maas wrote it before
           tmp_path / "digits" / "2020-01-02.other-host-7.jsonl"]
    for file in old:
        file.write_text("{}\n")
    assert sorted(log.prune()) == old and path.exists()


def test_agreements_and_catalog_are_config_keys():
    cfg = parse_config({"models": [{"name": "m", "agreement": {
        "license": "Apache-2.0", "allowed_uses": ["x"],
        "data_usage": {"log_payloads": True, "redaction": "mask_pii"}},
        "catalog": {"price_per_1k_rows": 0.1, "currency": "EUR"}}]})
    assert cfg.models[0].agreement.data_usage.redaction == "mask_pii"
    assert cfg.access.enabled and cfg.access_store.endswith("access.db")
    for bad, fragment in [({"allowed_uses": []}, "allowed_uses"),
                          ({"data_usage": {"redaction": "blur"}}, "redaction"),
                          ({"data_usage": {"retention_days": 0}}, "retention_days")]:
        with pytest.raises(Exception, match=fragment):
            ModelConfig(name="m", agreement={"license": "MIT", "allowed_uses": ["x"]} | bad)


def test_since_takes_durations_and_dates():
    assert parse_since("24h", now=100_000.0) == 100_000.0 - 86400
    assert parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()
    with pytest.raises(ValueError, match="30m, 24h, 7d"):
        parse_since("yesterday")


def _write_config(tmp_path: Path, terms: dict, store_url: str) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                    "access": {"store": store_url},
                                    "models": [{"name": "digits", "agreement": terms}]}))
    return path


def test_cli_keys_and_agreements(tmp_path, store_url):
    runner = CliRunner()
    terms = {"license": "MIT", "allowed_uses": ["research"]}
    config = _write_config(tmp_path, terms, store_url)
    made = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--models", "digits",
                               "--rate", "50/s", "--quota", "1000/day", "-c", str(config),
                               "--json"])
    assert made.exit_code == 0, made.output
    created = json.loads(made.output)
    secret = created["key"].split("_", 2)[2]
    listed = runner.invoke(app, ["keys", "list", "-c", str(config), "--json"])
    assert secret not in listed.output
    assert json.loads(listed.output)[0]["quota"] == "1000 requests/day"
    wrong = runner.invoke(app, ["keys", "create", "-t", "x", "-m", "nope", "-c", str(config)])
    assert wrong.exit_code == 2 and "unknown model(s) ['nope']" in wrong.output
    accepted = runner.invoke(app, ["agreements", "accept", "-t", "acme", "-m", "digits", "-v", "1",
                                   "--no-payload-logging", "--by", "alice", "-c", str(config),
                                   "--json"])
    assert json.loads(accepted.output)["log_payloads"] is False
    _write_config(tmp_path, terms | {"allowed_uses": ["research", "commercial"]}, store_url)
    shown = runner.invoke(app, ["agreements", "show", "digits", "-c", str(config), "--json"])
    assert "now version 2" in shown.stderr
    assert [v["version"] for v in json.loads(shown.stdout)["versions"]] == [1, 2]
    table = runner.invoke(app, ["agreements", "show", "digits", "-c", str(config)])
    assert table.exit_code == 0, table.output
    assert "agreement version 2 (current)" in table.stdout and '"commercial"' in table.stdout
    assert "accepted v1 by tenant acme (alice)" in table.stdout
    stale = runner.invoke(app, ["agreements", "accept", "-t", "acme", "-m", "digits", "-v", "1",
                                "-c", str(config)])
    assert stale.exit_code == 1 and "accept version 2" in stale.output
    store = AccessStore(store_url)
    assert [a.model for a in publish_agreements(store, [ModelConfig(name="plain")])] == []


def test_terms_written_by_a_newer_maas_still_read(store):
    """A newer maas sharing the store may add terms fields: this release reads what it knows
    (its replicas keep enforcing the agreement) instead of failing on the unknown keys."""
    from maas.access.tables import agreements

    terms = {"license": "MIT", "allowed_uses": ["research"], "watermark": "required",
             "data_usage": {"log_payloads": True, "retention_days": 7, "region": "eu"}}
    with store.engine.begin() as conn:
        conn.execute(agreements.insert().values(model="newer", version=1, digest="d",
                                                published_at=time.time(),
                                                terms=json.dumps(terms)))
    agreement = store.agreement("newer")
    assert agreement.terms.license == "MIT" and agreement.terms.data_usage.retention_days == 7


def test_a_new_keys_first_concurrent_requests_are_all_admitted(tmp_path, store_url):
    """20 requests at once with a key the replica has not seen yet: one store read, which
    all of them wait for (they used to get one 200 and 401s until the next second)."""
    import asyncio

    from maas.app_args import AccessArgs
    from serve_apps.gate import AccessGate

    def unreachable(url: str):
        raise ConnectionError("no Ray in unit tests")

    gate = AccessGate(AccessArgs(state_dir=str(tmp_path), store=store_url, usage_flush_s=60.0),
                      "m", connect=unreachable)
    try:
        key, _ = gate.store.create_key("acme", ["m"])  # after the gate read the keys
        reads = []
        read = gate.store.key
        gate.store.key = lambda key_id: (reads.append(key_id), time.sleep(0.05),
                                         read(key_id))[2]

        async def burst():
            headers = {"authorization": f"Bearer {key}"}
            return await asyncio.gather(*(gate.admit(headers) for _ in range(20)))

        admitted = asyncio.run(burst())
        assert [a.tenant for a in admitted] == ["acme"] * 20 and len(reads) == 1, reads
    finally:
        gate.close()
