"""Two nodes, one truth: a model's 2 replicas on two Ray nodes (the head and a worker node that
joins it, as in test_node_loss.py), one access store on the session's PostgreSQL server, one
payload folder. What a key may do and what it used is the same whichever node answers:

- usage counted on both nodes sums to exactly what the clients got;
- a rate limit and a request quota hold across the nodes (one limiter actor leases them);
- a revoked key is refused on both within ``access.refresh_s``;
- a promotion reaches the replicas on both nodes;
- the payload log is written to one folder, by both;
- the worker node killed mid-load: no answered request is missing from usage
  (``access.usage_durable``: a replica answers once the request's usage is stored).

Which node answered is read from each node's own Prometheus endpoint (Ray's metrics agent
exports the series of its node's processes). The tests run in file order; the last kills the
worker node."""

import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from maas.access import AccessStore, Quota
from maas.config import DeployConfig
from maas.routes import SERVER_APP, model_app_name, model_route
from maas.registry import Registry
from serve_apps.deploy import deploy_model, wait_for_version
from tests.conftest import delete_apps, register_versions, until
from tests.reliability.nodes import WorkerNode, replica_nodes
from tests.reliability.traffic import Load, paced

pytestmark = [pytest.mark.reliability, pytest.mark.postgres]
NAME = "shared"
APP = model_app_name(NAME)
REFRESH_S = 1.0
TERMS = {"license": "MIT", "allowed_uses": ["testing"],
         "data_usage": {"log_payloads": True, "retention_days": 1, "redaction": "none"}}


@dataclass
class Two:
    """The deployed model, its store, and the two nodes."""

    cfg: DeployConfig
    store: AccessStore
    registry: Registry
    url: str
    body: dict
    worker: WorkerNode
    payloads: Path

    def key(self, tenant: str, **limits) -> dict[str, str]:
        key, _ = self.store.create_key(tenant, [NAME], **limits)
        self.store.accept(tenant, NAME, self.store.agreement(NAME).version, "test")
        return {"Authorization": f"Bearer {key}"}

    def used(self, tenant: str) -> Counter:
        """The store's requests of ``tenant``, by status."""
        return Counter({r.status: r.requests for r in self.store.usage(tenant=tenant)})


@pytest.fixture(scope="module")
def two(serve_port, deploy_cfg, postgres, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two-nodes")
    worker = WorkerNode(tmp)
    try:
        data = deploy_cfg.model_dump(mode="json")
        data.update(access={"enabled": True, "store": postgres.new_database("two"),
                            "refresh_s": REFRESH_S, "usage_flush_s": 0.5,
                            "payload_dir": str(tmp / "payloads")},
                    models=[{"name": NAME, "agreement": TERMS,
                             "serve": {"num_replicas": 2, "cpus_per_replica": 0.2,
                                       "alias_poll_s": 1.0}}])
        cfg = DeployConfig.model_validate(data)
        registry, splits = register_versions(cfg, NAME, [0, 1], tmp)  # 1 serves, 2 waits
        deploy_model(cfg, cfg.model(NAME))
        wait_for_version(cfg, cfg.model(NAME), 1)
        placed = set(replica_nodes(APP).values())
        assert worker.node_id in placed and len(placed) == 2, placed  # one on each node
        x = splits.x_test[:2]
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.tolist()}]}
        yield Two(cfg, AccessStore(cfg.access_store), registry,
                  f"http://127.0.0.1:{serve_port}{model_route(NAME)}/infer", body, worker,
                  tmp / "payloads" / NAME)
    finally:
        delete_apps(APP, SERVER_APP)
        worker.kill()


def by_node() -> dict[str, Counter]:
    """Node id -> the model's requests its replicas answered, by (version, status): read from
    that node's own metrics endpoint."""
    import ray

    found = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        counts: Counter = Counter()
        for line in requests.get(url, timeout=10).text.splitlines():
            if line.startswith("ray_maas_requests_total{") and f'model="{NAME}"' in line:
                tags = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
                counts[(tags["version"], int(tags["status"]))] += float(line.rsplit(" ", 1)[1])
        found[node["NodeID"]] = counts
    return found


def gained(before: dict[str, Counter], statuses: Counter, timeout_s: float = 60) -> dict:
    """Per node, what its series gained since ``before``, once the gains add up to the
    clients' ``statuses`` (Ray's agents export every few seconds): {node id: Counter}."""
    def now() -> dict:
        after = by_node()
        return {node: counts - before.get(node, Counter()) for node, counts in after.items()}

    def by_status(gain: dict) -> Counter:
        total: Counter = Counter()
        for counts in gain.values():
            for (_, status), n in counts.items():
                total[status] += n
        return total

    gain = until(lambda: (g := now()) and by_status(g) == statuses and g, timeout_s, 1.0)
    assert gain, (by_status(now()), statuses)
    return gain


def per_node(gain: dict, status: int) -> list[int]:
    return sorted(int(sum(n for (_, s), n in counts.items() if s == status))
                  for counts in gain.values())


def test_usage_counted_on_both_nodes_sums_exactly(two, figures):
    headers = two.key("summed-co")
    before = by_node()
    with Load(two.url, two.body, clients=8, headers=headers) as load:
        load.until(600)
    answered = Counter({k: v for k, v in load.outcomes.items() if isinstance(k, int)})
    # Right as the clients stop: an answered request's usage is stored before its answer.
    stored = two.used("summed-co")
    gain = gained(before, answered)
    figures.append(load.row("usage on two nodes", "none: one key's requests answered by "
                            f"replicas on two nodes, {per_node(gain, 200)} each", 0.0,
                            f"; stored at once {dict(stored)}"))
    assert answered == Counter({200: load.sent}), load.outcomes
    assert stored == answered, (stored, answered)
    assert min(per_node(gain, 200)) > 0, gain


def test_a_rate_limit_holds_across_both_nodes(two, figures):
    """10/s offered 30/s for 10 s: about 100 accepted (plus the burst of 10), not 10/s per
    node. The tolerance: a replica leases ~50 ms of the rate ahead (maas.limits)."""
    headers = two.key("paced-co", rate=10.0, burst=10)
    before = by_node()
    results, took = paced(two.url, two.body, headers, per_s=30, seconds=10)
    gain = gained(before, results)
    allowed = 10 * took + 10
    figures.append({"test": "rate limit on two nodes", "fault": "10/s (burst 10) offered "
                    f"30/s for {took:.1f} s, answered by both nodes: 200s {per_node(gain, 200)}, "
                    f"429s {per_node(gain, 429)}", "load": f"6 clients; answers {dict(results)}; "
                    f"allowed {allowed:.0f}", "sent": sum(results.values()),
                    "failed": max(0, results[200] - round(allowed * 1.05)), "retries": 0,
                    "recovery_s": 0.0, "command": "make test-reliability"})
    assert set(results) == {200, 429}, results
    # Not starved either (a refused replica waits out the Retry-After it was given).
    assert 0.75 * 10 * took <= results[200] <= allowed * 1.05, (results, took)
    assert min(per_node(gain, 200)) > 0 and min(per_node(gain, 429)) > 0, gain


def test_a_quota_holds_across_both_nodes(two, figures):
    """A quota of 50 requests a day, flooded through both nodes: exactly 50 answered."""
    headers = two.key("quota-co", quota=Quota(50, "day"))
    before = by_node()
    with Load(two.url, two.body, clients=8, headers=headers) as load:
        load.until(200)
    time.sleep(1.0)  # leases older than 0.5 s go back with a replica's next ask
    with requests.Session() as session:
        late = Counter(session.post(two.url, json=two.body, headers=headers,
                                    timeout=30).status_code for _ in range(20))
    answered = load.outcomes[200] + late[200]
    # Each test waits for its own series (later tests read from there).
    gain = gained(before, load.outcomes + late)
    row = load.row("request quota on two nodes", "50 requests/day flooded by 8 clients, "
                   f"then 20 more: {answered} answered in all, {per_node(gain, 200)} by each "
                   "node", 0.0)
    figures.append(row | {"sent": load.sent + sum(late.values()), "failed": abs(answered - 50)})
    assert answered == 50, (load.outcomes, late)
    assert set(load.outcomes) | set(late) <= {200, 429}
    assert min(per_node(gain, 200)) > 0, gain
    assert until(lambda: two.used("quota-co")[200] == 50, 10), two.used("quota-co")


def test_a_revoked_key_is_refused_on_both_nodes_within_the_refresh(two, figures):
    headers = two.key("revoked-co")
    key_id = headers["Authorization"].split("_")[1]
    before = by_node()
    with Load(two.url, two.body, clients=8, headers=headers) as load:
        load.until(200)
        revoked = time.monotonic()
        two.store.revoke(key_id)  # as `maas keys revoke` does, from anywhere
        until(lambda: time.monotonic() - load.last.get(200, 0) > 3 * REFRESH_S, 30, 0.2)
    refused_after = load.last.get(200, revoked) - revoked
    answered = Counter({k: v for k, v in load.outcomes.items() if isinstance(k, int)})
    gain = gained(before, answered)
    row = load.row("revoke a key on two nodes", "revoked in the store while 8 clients use "
                   f"it; refused by both nodes: 401s {per_node(gain, 401)}", refused_after,
                   f"; access.refresh_s {REFRESH_S}")
    figures.append(row | {"failed": int(refused_after > REFRESH_S + 1.0)})
    assert set(answered) == {200, 401}, answered
    assert refused_after <= REFRESH_S + 1.0, refused_after
    assert min(per_node(gain, 401)) > 0, gain


def test_a_promotion_reaches_both_nodes(two, figures):
    headers = two.key("promoted-co")
    before = by_node()
    with Load(two.url, two.body, clients=4, headers=headers) as load:
        load.until(100)
        promoted = time.monotonic()
        two.registry.promote(NAME, 2)

        def on_two() -> bool:  # 20 answers in a row from version 2
            with requests.Session() as session:
                return all(session.post(two.url, json=two.body, headers=headers,
                                        timeout=30).json()["model_version"] == "2"
                           for _ in range(20))

        assert until(on_two, 60, 0.1)
        moved = time.monotonic() - promoted
        load.until(load.sent + 200)
    gain = until(lambda: (g := {node: c - before.get(node, Counter())
                                for node, c in by_node().items()})
                 and all(counts[("2", 200)] > 0 for counts in g.values()) and g, 60, 1.0)
    figures.append(load.row("promote on two nodes", "production 1 -> 2 while 4 clients "
                            "send; version 2 answered on both nodes", moved,
                            "; serve.alias_poll_s 1"))
    assert gain and len(gain) == 2, gain
    assert load.failed == 0, load.outcomes


def test_the_payload_log_is_one_folder_written_by_both_nodes(two):
    headers = two.key("logged-co")
    marker = f"two-{uuid.uuid4().hex}"
    with Load(two.url, two.body | {"id": marker}, clients=8, headers=headers) as load:
        load.until(200)

    def logged() -> dict[str, int]:  # file -> records of this test in it
        return {p.name: n for p in two.payloads.glob("*.jsonl")
                if (n := p.read_text().count(marker))}

    assert until(lambda: sum(logged().values()) == load.outcomes[200], 15), logged()
    writers = {int(name.rsplit("-", 1)[1].split(".")[0]) for name in logged()}
    placed = replica_nodes(APP)
    assert writers == set(placed) and len(set(placed.values())) == 2, (writers, placed)


def test_losing_the_worker_node_loses_no_answered_usage(two, figures):
    headers = two.key("lost-co")
    with Load(two.url, two.body, clients=8, headers=headers) as load:
        load.until(300)
        two.worker.kill()
        load.until(load.sent + 500, 180)
    answered = load.outcomes[200]
    # Read at once: what the clients got must already be there.
    stored = two.used("lost-co")
    row = load.row("lose a node: usage", "SIGKILL every process of the node holding 1 of 2 "
                   f"replicas mid-load; {answered} answered, {stored[200]} in usage", 0.0,
                   "; access.usage_durable")
    figures.append(row | {"failed": max(0, answered - stored[200])})
    assert stored[200] >= answered, (stored, load.outcomes)
    assert load.failed / load.sent <= 0.05, load.outcomes
