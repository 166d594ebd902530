"""A registered artifact changed on storage while its model is served: the replicas refuse to
load it (503 naming both hashes), the registry refuses to promote it, and the production
version goes on answering."""

from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from maas.config import ModelConfig
from maas.registry import IntegrityError
from serve_apps.deploy import deploy_model, wait_for_version
from maas.routes import SERVER_APP, model_app_name
from tests.conftest import delete_apps, register_versions

pytestmark = pytest.mark.reliability
NAME = "tampered"
APP = model_app_name(NAME)


def test_a_tampered_artifact_is_refused_while_production_serves(deploy_cfg, tmp_path, figures):

    registry, splits = register_versions(deploy_cfg, NAME, [0, 1], tmp_path)
    model = ModelConfig(name=NAME, serve={"cpus_per_replica": 0.2})
    url = deploy_model(deploy_cfg, model)
    info = registry.get(NAME, 2)
    stored = Path(urlparse(info.source).path) / ("model.onnx.enc" if info.encrypted
                                                  else "model.onnx")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit pattern flipped in the middle of the weights
    stored.write_bytes(bytes(data))
    x = splits.x_test[:2]
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.tolist()}]}
    try:
        wait_for_version(deploy_cfg, model, 1)
        tampered = requests.post(url.replace("/infer", "/versions/2/infer"), json=body,
                                 timeout=30)
        try:
            registry.promote(NAME, 2)
            promote_refused = False
        except IntegrityError:
            promote_refused = True
        production = requests.post(url, json=body, timeout=30)
    finally:
        delete_apps(APP, SERVER_APP)

    checks = {
        "infer on the tampered version is 503 naming both hashes":
            tampered.status_code == 503 and info.artifact_sha256 in tampered.json()["error"],
        "promotion refused": promote_refused,
        "production still answers": production.status_code == 200
                                    and production.json()["model_version"] == "1",
        "production alias unmoved": registry.current(NAME).version == 1,
    }
    figures.append({"test": "tampered artifact", "fault": "one byte of a registered version's "
                                                          "stored ONNX file changed",
                    "load": "infer on it, promote it, infer on production",
                    "sent": len(checks), "failed": sum(not ok for ok in checks.values()),
                    "retries": 0, "recovery_s": 0.0, "command": "make test-reliability"})
    assert all(checks.values()), (checks, tampered.text)
