"""LLM token limits, token usage and prices, on real access stores (no Ray; a SQLite file and
a database on the session's PostgreSQL server, ``store_url``): the limiter's whole
reservations, the replica API (reserve_tokens, settle), the payload log of prompts and
completions, and the CLI. (A store written before token limits: test_access_migrations.py.)"""

import asyncio
import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from maas.access import AccessStore, Quota, Refusal, UsageRow, parse_token_quota
from maas.app_args import AccessArgs
from maas.catalog import CatalogEntry, Price, model_card, price, usage_cost
from maas.cli import app
from maas.config import CatalogConfig, DataUsageConfig
from maas.limits import Buckets
from maas.payloads import PayloadLog, redact_text
from serve_apps.gate import AccessGate
from serve_apps.tokens import meter_refused, reserve_tokens, settle

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_reservation_is_all_or_nothing_and_unused_tokens_come_back():
    clock = Clock()
    buckets = Buckets(lambda key, since: 0, clock=clock)
    per_s, capacity = 600 / 60.0, 600  # 600 tokens per minute
    assert buckets.reserve("k", 500, per_s, capacity, None).granted == 500
    refused = buckets.reserve("k", 200, per_s, capacity, None)
    assert (refused.granted, refused.reason) == (0, "rate")
    assert refused.retry_after_s == pytest.approx((200 - 100) / per_s)
    buckets.release("k", 300, per_s, capacity, None)  # the completion used 200 of 500
    assert buckets.reserve("k", 400, per_s, capacity, None).granted == 400
    assert buckets.reserve("k", 601, per_s, capacity, None).reason == "too_large"
    buckets.release("k", -50, per_s, capacity, None)  # used 50 more than it reserved
    clock.now += 45.0  # 450 tokens later: 0 - 50 + 450 = 400
    assert buckets.reserve("k", 401, per_s, capacity, None).reason == "rate"
    assert buckets.reserve("k", 400, per_s, capacity, None).granted == 400


def test_a_token_quota_refuses_a_request_that_would_cross_it_before_it_runs():
    wall = Clock(86400 * 100 + 5)
    used = {"k": 900}
    buckets = Buckets(lambda key, since: used[key], wall=wall)
    quota = Quota(1000, "day", "tokens")
    crossing = buckets.reserve("k", 101, None, 0, quota)
    assert (crossing.reason, crossing.quota_left, crossing.quota_resets_at) == \
        ("quota", 100, 86400 * 101)
    assert crossing.retry_after_s == pytest.approx(86400 - 5)
    assert buckets.reserve("k", 100, None, 0, quota).quota_left == 0
    buckets.release("k", 60, None, 0, quota)
    assert buckets.reserve("k", 60, None, 0, quota).granted == 60
    assert buckets.reserve("k", 1001, None, 0, quota).reason == "too_large"
    wall.now += 86400  # the next day starts from the durable usage again
    used["k"] = 0
    assert buckets.reserve("k", 1000, None, 0, quota).quota_left == 0


def test_token_limits_are_stored_with_the_key(store_url):
    store = AccessStore(store_url)
    _, record = store.create_key("acme", ["chat"], tokens_per_minute=20000,
                                 token_quota=parse_token_quota("1000000/day"))
    assert store.key(record.key_id) == record
    assert (record.public()["tokens_per_minute"], record.public()["token_quota"]) == \
        (20000, "1000000 tokens/day")
    # past 2**31 - 1, where PostgreSQL's INTEGER ends: the columns are 64-bit
    _, big = store.create_key("acme", ["chat"], tokens_per_minute=3_000_000_000,
                              token_quota=parse_token_quota("5000000000/month"),
                              quota=Quota(4_000_000_000, "month"))
    assert store.key(big.key_id) == big and big.token_quota.limit == 5_000_000_000
    with pytest.raises(ValueError, match="token quota '5/week'"):
        parse_token_quota("5/week")
    with pytest.raises(Exception, match="tokens per minute: must be at least 1"):
        store.create_key("acme", ["chat"], tokens_per_minute=0)


def _unreachable(url: str) -> object:
    raise ConnectionError("no Ray in unit tests: the replica counts alone")


@pytest.fixture
def gate(tmp_path, store_url):
    made = AccessGate(AccessArgs(state_dir=str(tmp_path), store=store_url, usage_flush_s=60.0),
                      "chat", connect=_unreachable)
    yield made
    made.close()


def _admit(gate: AccessGate, **limits):
    key, _ = gate.store.create_key("acme", ["chat"], **limits)
    return asyncio.run(gate.admit({"authorization": f"Bearer {key}"}))


def test_reserve_then_settle_bills_the_engines_counts_and_returns_the_rest(gate):
    admission = _admit(gate, tokens_per_minute=1000)
    first = asyncio.run(reserve_tokens(gate, admission, 300, 500))
    assert first.reserved == 800 and first.local  # no actor reachable: counted here
    with pytest.raises(Refusal) as refused:
        asyncio.run(reserve_tokens(gate, admission, 100, 200))
    assert refused.value.status == 429 and "1000 tokens/min" in refused.value.message
    assert int(refused.value.headers["Retry-After"]) >= 1
    settle(first, completion_tokens=40, version="3", status=200, prompt_tokens=310)
    settle(first, completion_tokens=999, version="3", status=200)  # once only
    second = asyncio.run(reserve_tokens(gate, admission, 100, 200))  # 450 came back
    settle(second, completion_tokens=7, version="3", status=499)  # the client went away
    gate.flush()
    rows = {r.status: r for r in gate.store.usage(tenant="acme")}
    assert (rows[200].requests, rows[200].rows, rows[200].prompt_tokens,
            rows[200].completion_tokens) == (1, 1, 310, 40)
    assert (rows[499].prompt_tokens, rows[499].completion_tokens) == (100, 7)
    assert gate.store.token_quota_used(admission.key_id, 0) == 457


def test_token_refusals_name_the_limit_and_are_metered_as_the_tenants(gate):
    admission = _admit(gate, tokens_per_minute=1000, token_quota=Quota(1500, "day", "tokens"))
    with pytest.raises(Refusal) as too_large:
        asyncio.run(reserve_tokens(gate, admission, 900, 200))
    assert (too_large.value.status, too_large.value.param) == (400, "max_tokens")
    assert "1000 tokens per minute" in too_large.value.message
    with pytest.raises(Refusal) as over_quota:
        asyncio.run(reserve_tokens(gate, admission, 1, 1600))
    assert "token quota of 1500 tokens/day" in over_quota.value.message
    held = asyncio.run(reserve_tokens(gate, admission, 500, 500))
    settle(held, 500, "1", 200)
    # the quota is checked first: crossing it is refused until it resets, whatever the rate
    with pytest.raises(Refusal) as crossing:
        asyncio.run(reserve_tokens(gate, admission, 100, 500))
    assert crossing.value.status == 429 and "500 of its 1500 tokens/day left" in \
        crossing.value.message and "resets at" in crossing.value.message
    meter_refused(gate, crossing.value, admission, time.perf_counter())
    gate.flush()
    assert {r.status: r.requests for r in gate.store.usage(tenant="acme")} == {200: 1, 429: 1}


def test_keys_without_token_limits_and_access_off_are_not_limited(gate):
    admission = _admit(gate)
    free = asyncio.run(reserve_tokens(gate, admission, 10**6, 10**6))
    assert free.reserved == 0
    settle(free, 5, "1", 200)
    open_door = asyncio.run(reserve_tokens(None, admission, 10, 10))
    settle(open_door, 5, "1", 200)  # access off: nothing to meter, nothing raised
    with pytest.raises(Refusal, match="max_tokens: must be at least 1"):
        asyncio.run(reserve_tokens(gate, admission, 10, 0))


def test_prompts_and_completions_are_logged_redacted_as_the_terms_say(tmp_path):
    prompt = [{"role": "user", "content": "mail bob@example.com please"}]
    assert redact_text(prompt, "mask_pii") == [{"role": "user", "content": "mail <email> please"}]
    assert redact_text("call +1 (555) 010-9999", "mask_pii") == "call <phone>"
    digest = redact_text(prompt, "digest")
    assert list(digest) == ["sha256"] and "bob" not in json.dumps(digest)
    log = PayloadLog(tmp_path, "chat", DataUsageConfig(log_payloads=True, redaction="digest"))
    log.add_text("acme", "k1", "2", "req-1", "my card 4111 1111 1111 1111", "noted: 4111...")
    log.flush()
    (path,) = (tmp_path / "chat").glob("*.jsonl")
    record = json.loads(path.read_text())
    assert set(record) == {"time", "tenant", "key_id", "version", "prompt", "completion"}
    assert "4111" not in path.read_text() and len(record["completion"]["sha256"]) == 64


def test_cost_prices_rows_and_tokens_and_cards_show_token_prices(tmp_path):
    prices = CatalogConfig(price_per_1k_rows=1.0, price_per_1k_input_tokens=0.5,
                           price_per_1k_output_tokens=2.0, currency="EUR")
    row = UsageRow("acme", "chat", "1", 200, 3, 3, 1.0, prompt_tokens=2000,
                   completion_tokens=500)
    assert usage_cost(row, prices) == pytest.approx(3 / 1000 + 1.0 + 1.0)
    gone = UsageRow("acme", "chat", "1", 499, 1, 0, 1.0, prompt_tokens=1000)
    assert usage_cost(gone, prices) == pytest.approx(0.5)
    assert usage_cost(UsageRow("acme", "chat", "1", 500, 1, 0, 1.0, 1000, 9), prices) is None
    assert usage_cost(row, CatalogConfig()) is None and price(CatalogConfig()) is None
    assert price(prices) == Price(per_1k_rows=1.0, per_1k_input_tokens=0.5,
                                  per_1k_output_tokens=2.0, currency="EUR")


def test_a_card_shows_the_production_versions_context_length_and_token_prices(tmp_path):
    from maas.registry import Registry
    from tests.unit.test_registry import _tiny_onnx

    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    entry = CatalogEntry(name="chat", price_per_1k_input_tokens=0.5,
                         price_per_1k_output_tokens=1.5)
    unregistered = model_card(entry, registry, None)
    assert unregistered.context_length is None and unregistered.price.per_1k_rows is None
    experiment = registry.client.create_experiment("t", artifact_location=(tmp_path / "a").as_uri())
    run_id = registry.client.create_run(experiment).info.run_id
    info = registry.register("chat", _tiny_onnx(tmp_path / "m.onnx"), run_id=run_id,
                             metrics={"context_length": 2048.0}, variant="fp32",
                             data_fingerprint="d", config_digest="c")
    registry.promote("chat", info.version)
    card = model_card(entry, registry, None)
    assert (card.context_length, card.price.per_1k_output_tokens) == (2048, 1.5)


def _config(tmp_path: Path, store_url: str) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                    "access": {"store": store_url}, "models": [
        {"name": "chat", "catalog": {"price_per_1k_input_tokens": 0.5,
                                     "price_per_1k_output_tokens": 2.0}}]}))
    return path


def test_cli_creates_token_limited_keys_and_prices_token_usage(tmp_path, store_url):
    runner = CliRunner()
    config = _config(tmp_path, store_url)
    made = runner.invoke(app, ["keys", "create", "-t", "acme", "-m", "chat",
                               "--tokens-per-minute", "20000", "--token-quota", "1000000/day",
                               "-c", str(config), "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["token_quota"] == "1000000 tokens/day"
    bad = runner.invoke(app, ["keys", "create", "-t", "acme", "-m", "chat", "--token-quota",
                              "many", "-c", str(config)])
    assert bad.exit_code == 2 and "token quota 'many'" in bad.output
    listed = runner.invoke(app, ["keys", "list", "-c", str(config)])
    assert "20000" in listed.stdout and "1000000 tokens/day" in listed.stdout
    store = AccessStore(store_url)
    minute = int(time.time() // 60 * 60)
    store.add_usage({(minute, "acme", "k", "chat", "1", 200): [2, 2, 8.0, 2000, 1000]})
    shown = runner.invoke(app, ["usage", "-c", str(config), "--json"])
    (row,) = json.loads(shown.stdout)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost"], row["currency"]) == \
        (2000, 1000, 3.0, "USD")
    table = runner.invoke(app, ["usage", "-c", str(config)])
    assert table.exit_code == 0 and "3.0000 USD" in table.stdout and "completion" in table.stdout


def test_the_gate_logs_an_llm_exchange_only_where_terms_and_tenant_allow(tmp_path, store_url):
    from maas.config import AgreementConfig

    terms = AgreementConfig(license="MIT", allowed_uses=["chat"], data_usage=DataUsageConfig(
        log_payloads=True, redaction="mask_pii"))
    gate = AccessGate(AccessArgs(state_dir=str(tmp_path), store=store_url, usage_flush_s=60.0),
                      "chat", terms, connect=_unreachable)
    try:
        keys = {}
        for tenant, allows in (("open-co", True), ("private-co", False)):
            keys[tenant], _ = gate.store.create_key(tenant, ["chat"])
            gate.store.accept(tenant, "chat", 1, "alice", log_payloads=allows)
        for tenant, key in keys.items():
            admission = asyncio.run(gate.admit({"authorization": f"Bearer {key}"}))
            gate.log_text(admission, "1", None, [{"role": "user", "content": "I am a@b.io"}],
                          f"hello {tenant}, a@b.io")
        gate.flush()
    finally:
        gate.close()
    (path,) = (tmp_path / "payloads" / "chat").glob("*.jsonl")
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["tenant"] == "open-co" and "a@b.io" not in path.read_text()
    assert record["prompt"][0]["content"] == "I am <email>"
    assert record["completion"] == "hello open-co, <email>"


def test_catalog_prices_read_as_people_write_them():
    from maas.cli.usage import _price_text

    assert _price_text(None) == "-"
    assert _price_text(Price(per_1k_rows=0.5, currency="USD")) == "0.5 USD / 1k rows"
    assert _price_text(Price(per_1k_rows=None, per_1k_input_tokens=0.1,
                             per_1k_output_tokens=0.3, currency="EUR")) == \
        "0.1 / 0.3 EUR per 1k input / output tokens"
