"""Serving under faults: 2 replicas under steady load, one replica's process killed, then the
HTTP proxy's. Counts what clients saw and how long until the app was whole again."""

import os
import signal
import threading
import time
from collections import Counter

import pytest
import requests

from maas.config import ModelConfig
from maas.serving import deploy_model, model_app_name, wait_for_version
from tests.conftest import register_versions

pytestmark = pytest.mark.reliability
NAME = "chaos"
APP = model_app_name(NAME)
COMMAND = "make test-reliability"


class Load:
    """``clients`` threads posting one request after another until stopped; each outcome is
    counted (HTTP status, or the exception's name).

    A connection that fails is retried (every 0.2 s, for up to RETRY_S): what a sensible
    client does, and safe here, since an inference changes nothing. Retries are counted
    apart; a request is *failed* when it got no 200 in the end."""

    RETRY_S = 60.0  # more than the proxy restart takes here (24-30 s)

    def __init__(self, url: str, body: dict, clients: int = 8):
        self.url, self.body = url, body
        self.outcomes: Counter = Counter()
        self.retries = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                self.outcomes[self._send(session)] += 1

    def _send(self, session: requests.Session) -> int | str:
        give_up = time.monotonic() + self.RETRY_S
        while True:
            try:
                return session.post(self.url, json=self.body, timeout=30).status_code
            except requests.ConnectionError as exc:
                if time.monotonic() > give_up or self._stop.is_set():
                    return type(exc).__name__
                self.retries += 1
                time.sleep(0.2)
            except requests.RequestException as exc:
                return type(exc).__name__

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return self.sent - self.outcomes[200]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def until(self, sent: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sent < sent and time.monotonic() < deadline:
            time.sleep(0.1)


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
    from ray import serve

    _, splits = register_versions(deploy_cfg, NAME, [0], tmp_path_factory.mktemp("chaos"))
    model = ModelConfig(name=NAME, serve={"num_replicas": 2, "cpus_per_replica": 0.2})
    url = deploy_model(deploy_cfg, model)
    wait_for_version(deploy_cfg, model, 1)
    x = splits.x_test[:4]
    yield {"url": url, "body": {"inputs": [{"name": "input", "shape": list(x.shape),
                                            "datatype": "FP32", "data": x.tolist()}]}}
    serve.delete(APP)
    serve.delete("maas")


def _recover(pids_before: list[int], class_name: str, want: int, timeout_s: float) -> float:
    """Seconds until ``want`` processes of ``class_name`` are alive again, the killed one
    replaced, and the app RUNNING with all its replicas."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        pids = _alive(class_name)
        if len(pids) >= want and pids != pids_before and _running() == 2:
            return time.monotonic() - started
        time.sleep(0.2)
    return float("inf")


def test_killing_one_of_two_replicas_under_load(chaos, figures):
    replica = f"ServeReplica:{APP}:{APP}"
    pids = _alive(replica)
    assert len(pids) == 2
    with Load(chaos["url"], chaos["body"]) as load:
        load.until(300)
        os.kill(pids[0], signal.SIGKILL)
        recovery = _recover(pids, replica, 2, timeout_s=60)
        load.until(load.sent + 1000)
    figures.append({"test": "kill 1 of 2 replicas", "fault": "SIGKILL one replica process",
                    "load": "8 clients, 4-row requests", "sent": load.sent,
                    "failed": load.failed, "retries": load.retries, "recovery_s": recovery,
                    "command": COMMAND})
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
    figures.append({"test": "kill the HTTP proxy", "fault": "SIGKILL Serve's proxy actor",
                    "load": "8 clients, 4-row requests", "sent": load.sent,
                    "failed": load.failed, "retries": load.retries, "recovery_s": recovery,
                    "command": COMMAND})
    assert recovery <= 60, load.outcomes
    assert load.failed / load.sent <= 0.005, load.outcomes  # refused connections were retried
