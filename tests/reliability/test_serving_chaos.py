"""Serving under faults: 2 replicas under steady load, one replica's process killed, then the
HTTP proxy's, and a new version promoted. Counts what clients saw and how long until the app
was whole again (or, for the promotion, until every replica served the new version)."""

import os
import signal
import time

import pytest

from maas.config import ModelConfig
from serve_apps.deploy import deploy_model, wait_for_version
from maas.routes import SERVER_APP, model_app_name
from tests.conftest import delete_apps, register_versions, until
from tests.reliability.traffic import Load

pytestmark = pytest.mark.reliability
NAME = "chaos"
APP = model_app_name(NAME)


def _alive(class_name: str) -> list[int]:
    from ray.util.state import list_actors

    return sorted(a.pid for a in list_actors(filters=[("class_name", "=", class_name),
                                                      ("state", "=", "ALIVE")]))


def _running() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    return 0 if app is None else app.deployments[APP].replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def chaos(deploy_cfg, tmp_path_factory):

    registry, splits = register_versions(deploy_cfg, NAME, [0, 1],
                                         tmp_path_factory.mktemp("chaos"))
    model = ModelConfig(name=NAME, serve={"num_replicas": 2, "cpus_per_replica": 0.2,
                                          "alias_poll_s": 0.5})
    url = deploy_model(deploy_cfg, model)
    wait_for_version(deploy_cfg, model, 1)
    x = splits.x_test[:4]
    yield {"url": url, "registry": registry, "model": model,
           "body": {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                "data": x.tolist()}]}}
    delete_apps(APP, SERVER_APP)


def _recover(pids_before: list[int], class_name: str, want: int, timeout_s: float) -> float:
    """Seconds until ``want`` processes of ``class_name`` are alive again, the killed one
    replaced, and the app RUNNING with all its replicas."""
    def recovered() -> bool:
        pids = _alive(class_name)
        return len(pids) >= want and pids != pids_before and _running() == 2

    started = time.monotonic()
    return time.monotonic() - started if until(recovered, timeout_s) else float("inf")


def test_killing_one_of_two_replicas_under_load(chaos, figures):
    replica = f"ServeReplica:{APP}:{APP}"
    pids = _alive(replica)
    assert len(pids) == 2
    with Load(chaos["url"], chaos["body"]) as load:
        load.until(300)
        os.kill(pids[0], signal.SIGKILL)
        recovery = _recover(pids, replica, 2, timeout_s=60)
        load.until(load.sent + 1000)
    figures.append(load.row("kill 1 of 2 replicas", "SIGKILL one replica process", recovery))
    assert recovery <= 30, f"replica not replaced within 30 s ({load.outcomes})"
    assert load.failed / load.sent <= 0.005, load.outcomes


def test_killing_the_http_proxy_under_load(chaos, figures):
    proxies = _alive("ProxyActor")
    assert proxies
    with Load(chaos["url"], chaos["body"]) as load:
        load.until(300)
        os.kill(proxies[0], signal.SIGKILL)
        recovery = _recover(proxies, "ProxyActor", 1, timeout_s=60)
        load.until(load.sent + 1000)
    figures.append(load.row("kill the HTTP proxy", "SIGKILL Serve's proxy actor", recovery))
    assert recovery <= 60, load.outcomes
    assert load.failed / load.sent <= 0.005, load.outcomes  # refused connections were retried


def test_promoting_a_version_under_load_fails_no_request(chaos, deploy_cfg, figures):
    with Load(chaos["url"], chaos["body"]) as load:
        load.until(300)
        started = time.monotonic()
        chaos["registry"].promote(NAME, 2)
        wait_for_version(deploy_cfg, chaos["model"], 2)
        switched = time.monotonic() - started
        load.until(load.sent + 1000)
    figures.append(load.row("promote under load",
                            "version 2 takes the production alias; 2 replicas switch", switched))
    assert load.failed == 0, load.outcomes
