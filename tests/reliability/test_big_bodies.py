"""100 MB bodies against a served model, declared (413 from the headers) and streamed chunked
(411, no length declared), five of each: every one refused with a message, serving unharmed,
and the memory of Serve's proxy and the replica bounded."""

import pytest
import requests

from maas.config import ModelConfig
from serve_apps.deploy import deploy_model, wait_for_version
from maas.routes import SERVER_APP, model_app_name
from tests.conftest import delete_apps, register_versions
from tests.reliability.conftest import MB, rss_growth, serve_rss_mb

pytestmark = pytest.mark.reliability
NAME = "bulky"
APP = model_app_name(NAME)
EACH = 5
# What the client has pushed before the refusal reaches it lands in the proxy; 300-500 MB
# would mean the bodies were buffered, as Serve does for a chunked body that is read.
BOUND_MB = 60


def test_100_mb_bodies_are_refused_and_memory_stays_bounded(deploy_cfg, tmp_path_factory,
                                                            figures):

    register_versions(deploy_cfg, NAME, [0], tmp_path_factory.mktemp("bulky"))
    model = ModelConfig(name=NAME, serve={"cpus_per_replica": 0.2})
    url = deploy_model(deploy_cfg, model)
    body = b"x" * (100 * MB)

    def chunks():
        for start in range(0, len(body), MB):
            yield body[start:start + MB]

    def refused(data, status: int, fragment: str) -> bool:
        reply = requests.post(url, data=data, timeout=60,
                              headers={"Content-Type": "application/json"})
        return reply.status_code == status and fragment in reply.json()["error"]

    try:
        wait_for_version(deploy_cfg, model, 1)
        before = serve_rss_mb(APP)
        declared = [refused(body, 413, "serve.max_body_bytes") for _ in range(EACH)]
        after_declared = serve_rss_mb(APP)
        chunked = [refused(chunks(), 411, "Content-Length") for _ in range(EACH)]
        after_chunked = serve_rss_mb(APP)
        ok = requests.post(url, timeout=30, json={"inputs": [{
            "name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]})
    finally:
        delete_apps(APP, SERVER_APP)

    growth = {"declared": rss_growth(after_declared, before),
              "chunked": rss_growth(after_chunked, after_declared)}
    figures.append({"test": "100 MB bodies",
                    "fault": f"{EACH} declared (413), then {EACH} chunked (411) 100 MB bodies",
                    "load": f"one client; RSS growth MB {growth}",
                    "sent": 2 * EACH, "failed": 2 * EACH - sum(declared) - sum(chunked),
                    "retries": 0, "recovery_s": 0.0, "command": "make test-reliability"})
    assert all(declared) and all(chunked)
    assert all(mb < BOUND_MB for kinds in growth.values() for mb in kinds.values()), growth
    assert ok.status_code == 200
