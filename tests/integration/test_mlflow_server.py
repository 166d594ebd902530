"""MLflow as a server, as cluster/mlflow.yaml runs it: runs and the registry in PostgreSQL,
model files through the server (``--serve-artifacts``). A version registered through it is
stored under the server's artifacts destination, not under state_dir, and a replica serving
the model reads its file through the server."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from maas.config import ModelConfig, parse_config
from maas.routes import model_app_name
from serve_apps.deploy import deploy_model, wait_for_version
from tests.conftest import _free_port, delete_apps, register_versions, until

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
NAME = "through-mlflow"


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` on a fresh PostgreSQL database of the session's server; (URL, the
    folder it keeps artifacts in)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    artifacts = folder / "artifacts"
    url = f"http://127.0.0.1:{_free_port()}"
    log = folder / "mlflow-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server",
             "--backend-store-uri", postgres.new_database(), "--serve-artifacts",
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
             "--port", url.rsplit(":", 1)[1], "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # It migrates the new database first: tens of seconds on this machine.
        until(lambda: proc.poll() is not None or _healthy(url), timeout_s=180, every_s=0.5)
        assert _healthy(url), f"mlflow server did not start:\n{log.read_text()[-3000:]}"
        yield url, artifacts
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_version_goes_through_the_server_and_a_replica_serves_it(mlflow_server, deploy_cfg,
                                                                   tmp_path):
    url, artifacts = mlflow_server
    data = deploy_cfg.model_dump(mode="json")
    data.update(state_dir=str(tmp_path / "state"), tracking={"uri": url})
    cfg = parse_config(data, source="integration")

    registry, splits = register_versions(cfg, NAME, [0], tmp_path)
    info = registry.get(NAME, 1)
    assert info.source.startswith("mlflow-artifacts:"), info.source
    stored = [p for p in artifacts.rglob("*") if p.is_file()]
    assert any(p.suffix == ".onnx" for p in stored), stored
    assert not (cfg.state_path / "mlartifacts").exists()  # nothing on this node's disk

    model = ModelConfig(name=NAME, serve={"cpus_per_replica": 0.2})
    infer = deploy_model(cfg, model)
    try:
        wait_for_version(cfg, model, 1)
        x = splits.x_test[:3]
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        answer = requests.post(infer, json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "1"
        assert {o["name"] for o in answer.json()["outputs"]} >= {"label"}
    finally:
        delete_apps(model_app_name(NAME))
