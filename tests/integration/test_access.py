"""Access on a real served app (2 replicas): 401, 403 scope, 403 agreement, 429 rate with
Retry-After, 429 quota, a rate held across replicas, exact usage, payload logging by the
terms, the catalog, and a store that holds only key hashes."""

import re
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import requests

from maas.access import AccessStore, Quota
from maas.config import DeployConfig, ModelConfig
from serve_apps.deploy import deploy_model, wait_for_version
from maas.routes import SERVER_APP, model_app_name, model_route
from tests.conftest import delete_apps, files_containing, register_versions, until
from tests.reliability.traffic import paced

pytestmark = pytest.mark.integration
NAME = "gated"
TERMS = {"license": "CC-BY-4.0", "allowed_uses": ["testing"],
         "data_usage": {"log_payloads": True, "retention_days": 1, "redaction": "none"}}


@pytest.fixture(scope="module")
def gated(deploy_cfg, tmp_path_factory):
    """Model ``gated`` with an agreement, on 2 replicas, behind the access gate; ``other`` is
    in the catalog only. Apps are deleted after the module."""

    state = tmp_path_factory.mktemp("access-state")
    data = deploy_cfg.model_dump(mode="json")
    data.update(state_dir=str(state),
                access={"enabled": True, "refresh_s": 0.5, "usage_flush_s": 0.5},
                models=[{"name": NAME, "agreement": TERMS,
                         "catalog": {"description": "digits, gated", "price_per_1k_rows": 0.5,
                                     "tags": ["vision"]},
                         "serve": {"num_replicas": 2, "cpus_per_replica": 0.2}},
                        {"name": "other"}])
    cfg = DeployConfig.model_validate(data)
    _, splits = register_versions(cfg, NAME, [0], tmp_path_factory.mktemp("gated"))
    deploy_model(cfg, cfg.model(NAME))
    wait_for_version(cfg, cfg.model(NAME), 1)
    yield {"cfg": cfg, "store": AccessStore(cfg.access_store), "x": splits.x_test,
           "base": f"http://127.0.0.1:{cfg.cluster.http_port}", "state": Path(state)}
    delete_apps(model_app_name(NAME), SERVER_APP)


def _key(gated, tenant: str, models=(NAME,), accept: bool = True, log_payloads: bool = True,
         **limits) -> str:
    store = gated["store"]
    key, _ = store.create_key(tenant, models, **limits)
    if accept:
        store.accept(tenant, NAME, store.agreement(NAME).version, "test", log_payloads)
    return key


def _infer(gated, key: str | None, rows: int = 1, session=None, route: str = "infer",
           **extra):
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    x = gated["x"][:rows]
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.tolist()}]} | extra
    return (session or requests).post(f"{gated['base']}/v2/models/{NAME}/{route}", json=body,
                                      headers=headers, timeout=30)


@pytest.mark.parametrize("header, fragment", [
    (None, "missing"),
    ("Basic dXNlcjpwYXNz", "Bearer scheme"),
    ("Bearer not-a-key", "not a maas API key"),
    ("Bearer maas_0123456789ab_" + "x" * 43, "unknown API key"),
])
def test_no_or_bad_key_is_401(gated, header, fragment):
    headers = {} if header is None else {"Authorization": header}
    for reply in (requests.post(f"{gated['base']}/v2/models/{NAME}/infer", json={},
                                headers=headers, timeout=30),
                  requests.get(f"{gated['base']}/v2/models/{NAME}", headers=headers, timeout=30),
                  requests.get(f"{gated['base']}/v2/catalog", headers=headers, timeout=30),
                  requests.get(f"{gated['base']}/v2/models/nope", headers=headers, timeout=30)):
        assert reply.status_code == 401, reply.text
        assert fragment in reply.json()["error"]
        assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_health_stays_open(gated):
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{NAME}/ready", "/v2"):
        assert requests.get(f"{gated['base']}{path}", timeout=30).status_code == 200, path


def test_a_revoked_key_is_401_within_the_refresh(gated):
    key = _key(gated, "revoked-co")
    assert _infer(gated, key).status_code == 200
    gated["store"].revoke(key.split("_")[1])
    # A requests.Response is falsy for 4xx, hence the message as the polled value.
    message = until(lambda: (r := _infer(gated, key)).status_code == 401 and r.json()["error"],
                     timeout_s=10)
    assert message and "was revoked at" in message


def test_a_model_outside_the_key_scope_is_403(gated):
    key = _key(gated, "scoped-co", models=("other",), accept=False)
    for reply in (_infer(gated, key),
                  requests.get(f"{gated['base']}/v2/models/{NAME}",
                               headers={"Authorization": f"Bearer {key}"}, timeout=30)):
        assert reply.status_code == 403, reply.text
        assert f"may not use model '{NAME}'" in reply.json()["error"]


def test_an_unaccepted_agreement_is_403_until_accepted(gated):
    store = gated["store"]
    key = _key(gated, "new-co", accept=False)
    reply = _infer(gated, key)
    assert reply.status_code == 403, reply.text
    version = store.agreement(NAME).version
    assert (f"has not accepted version {version} of the agreement for model '{NAME}'"
            in reply.json()["error"])
    assert f"maas agreements accept --tenant new-co --model {NAME} --version {version}" \
        in reply.json()["error"]
    store.accept("new-co", NAME, version, "test")
    assert until(lambda: _infer(gated, key).status_code == 200, timeout_s=10)


def test_over_the_rate_is_429_with_retry_after(gated):
    key = _key(gated, "fast-co", rate=5.0, burst=5)
    with requests.Session() as session:
        replies = [_infer(gated, key, session=session) for _ in range(20)]
    statuses = Counter(r.status_code for r in replies)
    assert statuses[200] >= 5 and statuses[429] >= 5, statuses
    refused = next(r for r in replies if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "may send 5 requests/s" in refused.json()["error"]


def test_over_the_quota_is_429_naming_it_and_its_reset(gated):
    key = _key(gated, "small-co", quota=Quota(5, "day"))
    statuses = [_infer(gated, key).status_code for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3
    reply = _infer(gated, key)
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d")
    message = reply.json()["error"]
    assert "quota" in message and "5 requests/day" in message, message
    assert f"resets at {tomorrow}T00:00:00Z" in message, message
    assert int(reply.headers["Retry-After"]) > 0


def test_a_rate_holds_across_two_replicas(gated):
    """20/s, offered 60/s for 10 s through 2 replicas: about 200 accepted, not 400. A busy
    machine can stretch the 10 s schedule, so the bound is 20/s over the time it took."""
    from ray import serve

    app = serve.status().applications[model_app_name(NAME)]
    assert app.deployments[f"model-{NAME}"].replica_states.get("RUNNING") == 2
    key = _key(gated, "steady-co", rate=20.0)
    x = gated["x"][:1]
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.tolist()}]}
    # 6 clients, each 10/s on a fixed schedule.
    results, took = paced(f"{gated['base']}/v2/models/{NAME}/infer", body,
                          {"Authorization": f"Bearer {key}"}, per_s=60, seconds=10)
    assert set(results) <= {200, 429} and sum(results.values()) == 600, results
    # 20/s and 20 more for the burst (4) and the tokens replicas lease ahead; counted per
    # replica it would be twice the rate.
    assert 180 <= results[200] <= 20 * took * 1.05 + 20, (results, took)


def test_usage_counts_equal_the_requests_sent(gated):
    key = _key(gated, "metered-co", quota=Quota(12, "day"))
    sent: Counter = Counter()
    for _ in range(7):
        sent[_infer(gated, key, rows=3).status_code] += 1
    for _ in range(3):
        sent[requests.post(f"{gated['base']}/v2/models/{NAME}/infer", data=b"{",
                           headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code] += 1
    for _ in range(2):
        sent[_infer(gated, key, route="versions/9/infer").status_code] += 1
    for _ in range(4):
        sent[_infer(gated, key).status_code] += 1
    assert sent == Counter({200: 7, 400: 3, 404: 2, 429: 4}), sent

    def metered() -> Counter:
        return Counter({r.status: r.requests
                        for r in gated["store"].usage(tenant="metered-co")})

    assert until(lambda: metered() == sent, timeout_s=15), metered()
    rows = {r.status: r.rows for r in gated["store"].usage(tenant="metered-co")}
    assert rows[200] == 21  # 7 requests of 3 rows


def test_explanations_are_gated_metered_apart_and_add_up(gated):
    key = _key(gated, "explained-co")
    assert _infer(gated, None, route="explain").status_code == 401
    assert _infer(gated, _key(gated, "shy-co", accept=False), route="explain").status_code == 403
    reply = _infer(gated, key, rows=2, route="explain", parameters={"steps": 16})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["parameters"]["method"] == "integrated_gradients"
    tensors = {o["name"]: o for o in body["outputs"]}
    assert tensors["attributions"]["shape"] == [2, 64]
    attributions = np.array(tensors["attributions"]["data"]).reshape(2, 64)
    change = np.array(tensors["score"]["data"]) - np.array(tensors["baseline_score"]["data"])
    assert np.allclose(attributions.sum(axis=1), change, atol=1e-4)
    bad = _infer(gated, key, route="explain", parameters={"steps": 0})
    assert bad.status_code == 400 and "parameters.steps" in bad.json()["error"]
    versioned = _infer(gated, key, route="versions/1/explain")
    assert versioned.status_code == 200 and versioned.json()["model_version"] == "1"

    def metered() -> dict:
        return {(r.model, r.status): r.requests
                for r in gated["store"].usage(tenant="explained-co")}
    assert until(lambda: metered() == {(f"{NAME}/explain", 200): 2,
                                       (f"{NAME}/explain", 400): 1}, timeout_s=15), metered()


def test_payloads_are_logged_only_where_the_terms_allow(gated):
    import ray

    quiet = _key(gated, "quiet-co", log_payloads=False)  # refused logging when accepting
    loud = _key(gated, "loud-co")
    quiet_marker, loud_marker = f"quiet-{uuid.uuid4().hex}", f"loud-{uuid.uuid4().hex}"
    for _ in range(6):
        assert _infer(gated, quiet, id=quiet_marker).status_code == 200
    for _ in range(6):
        assert _infer(gated, loud, id=loud_marker).status_code == 200
    payloads = gated["state"] / "payloads" / NAME

    def loud_logged() -> int:
        return sum(p.read_text().count(loud_marker) for p in payloads.glob("*.jsonl")) \
            if payloads.exists() else 0

    assert until(lambda: loud_logged() == 6, timeout_s=15), loud_logged()
    assert until(lambda: sum(r.requests for r in
                              gated["store"].usage(tenant="quiet-co")) == 6, timeout_s=15)
    logs = Path(ray._private.worker._global_node.get_session_dir_path())
    assert files_containing([logs, gated["state"]], quiet_marker.encode()) == []
    record = next(line for p in payloads.glob("*.jsonl") for line in p.read_text().splitlines()
                  if loud_marker in line)
    assert '"tenant":"loud-co"' in record and '"inputs":[{"name":"input"' in record


def test_the_catalog_shows_what_the_key_may_use(gated):
    def catalog(key: str) -> list[dict]:
        reply = requests.get(f"{gated['base']}/v2/catalog",
                             headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()

    (card,) = catalog(_key(gated, "catalog-co", accept=False))
    assert card["name"] == NAME and card["description"] == "digits, gated"
    assert card["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert card["versions"] == [1] and card["aliases"] == {"production": 1}
    assert card["metrics"]["held_out_accuracy"] == 0.5
    assert card["agreement"]["version"] == gated["store"].agreement(NAME).version
    assert card["agreement"]["license"] == "CC-BY-4.0"
    assert card["price"] == {"per_1k_rows": 0.5, "per_1k_input_tokens": None,
                             "per_1k_output_tokens": None, "currency": "USD"}
    everything = catalog(_key(gated, "all-co", models=("*",), accept=False))
    assert [c["name"] for c in everything] == [NAME, "other"]


def test_the_store_holds_only_key_hashes(gated):
    key = _key(gated, "hashed-co")
    secret = key.split("_", 2)[2]
    assert _infer(gated, key).status_code == 200
    files = list(gated["state"].glob("access.db*"))
    assert files and not any(secret.encode() in f.read_bytes() for f in files)
    record = gated["store"].key(key.split("_")[1])
    assert re.fullmatch(r"[0-9a-f]{64}", record.key_hash) and record.verifies(secret)
    assert np.all([secret not in str(v) for v in record.public().values()])


def test_prometheus_counts_requests_without_naming_tenants(gated, metrics_port, tmp_path):
    """Ray's metrics port answers without auth: the series count a model's requests, and
    name no tenant unless access.metrics_tenants says so (it is off here, as by default).
    A model of its own, which only this test calls, so that the count is exact."""
    name = "prom-counted"
    register_versions(gated["cfg"], name, [0], tmp_path)
    model = ModelConfig(name=name, serve={"cpus_per_replica": 0.1})
    deploy_model(gated["cfg"], model)
    key, _ = gated["store"].create_key("prom-co", [name])
    try:
        wait_for_version(gated["cfg"], model, 1)
        x = gated["x"][:1]
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.tolist()}]}
        for _ in range(3):
            reply = until(lambda: requests.post(
                f"{gated['base']}{model_route(name)}/infer", json=body, timeout=30,
                headers={"Authorization": f"Bearer {key}"}), timeout_s=10)
            assert reply.status_code == 200, reply.text

        def exported() -> tuple[float, list[str]]:
            """The model's answered requests, summed over its series; the series' lines."""
            text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            lines = [line for line in text.splitlines()
                     if line.startswith("ray_maas_requests_total") and f'model="{name}"' in line]
            return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                       if 'status="200"' in line), lines

        assert until(lambda: exported()[0] == 3.0, timeout_s=60, every_s=1.0), exported()
        lines = exported()[1]
        assert not any("tenant=" in line or '"prom-co"' in line for line in lines), lines
    finally:
        delete_apps(model_app_name(name))


def test_changed_terms_must_be_accepted_again(gated):
    """`maas agreements` publishes deploy.yaml's changed terms; replicas ask for the new
    version within access.refresh_s, with no redeploy."""
    from maas.config import AgreementConfig

    store = gated["store"]
    key = _key(gated, "loyal-co")
    assert _infer(gated, key).status_code == 200
    old = store.agreement(NAME).version
    changed = AgreementConfig.model_validate(TERMS | {"allowed_uses": ["testing", "research"]})
    new, created = store.publish(NAME, changed)
    assert created and new.version == old + 1
    message = until(lambda: (r := _infer(gated, key)).status_code == 403 and r.json()["error"],
                     timeout_s=10)
    assert message and f"has not accepted version {new.version}" in message
    store.accept("loyal-co", NAME, new.version, "test")
    assert until(lambda: _infer(gated, key).status_code == 200, timeout_s=10)
