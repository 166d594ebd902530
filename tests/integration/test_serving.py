"""The served Open Inference Protocol API on a real Serve app: conformance (tritonclient),
versions, canary, batching, metrics, autoscaling. Bad input and promotion under load are
fault tests: tests/reliability."""

import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.conftest import delete_apps, register_versions
from maas.config import ModelConfig
from maas.runtime import ort_session
from maas.registry import CANARY
from serve_apps.deploy import deploy_model, wait_for_version
from maas.routes import SERVER_APP, model_app_name

pytestmark = pytest.mark.integration
NAME = "served"


def _model_cfg(**serve) -> ModelConfig:
    return ModelConfig(name=NAME, serve={"alias_poll_s": 0.5, "max_body_bytes": 2**20,
                                         "canary_weight": 0.3} | serve)


@pytest.fixture(scope="module")
def served(deploy_cfg, tmp_path_factory):
    """Two registered versions of a small digits MLP (different seeds), version 1 in
    production and served; the app is deleted after the module."""

    folder = tmp_path_factory.mktemp("served")
    registry, splits = register_versions(deploy_cfg, NAME, [0, 1], folder)
    deploy_model(deploy_cfg, _model_cfg())
    wait_for_version(deploy_cfg, _model_cfg(), 1)
    sessions = {v: ort_session(registry.load(registry.get(NAME, v))) for v in (1, 2)}
    yield {"registry": registry, "splits": splits, "sessions": sessions, "folder": folder,
           "base": f"http://127.0.0.1:{deploy_cfg.cluster.http_port}"}
    delete_apps(model_app_name(NAME), SERVER_APP)


def _body(rows: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.tolist()}]} | extra


def test_tritonclient_sees_a_conformant_server(served, deploy_cfg):
    import tritonclient.http as triton

    x = served["splits"].x_test[:5]
    client = triton.InferenceServerClient(url=f"127.0.0.1:{deploy_cfg.cluster.http_port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, "2")
    assert client.get_server_metadata()["name"] == "maas"
    meta = client.get_model_metadata(NAME)
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert client.get_model_metadata(NAME, "2")["versions"] == ["2"]

    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    wanted = [triton.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "label")]
    for version, expected in (("", 1), ("2", 2)):
        result = client.infer(NAME, [tensor], model_version=version, outputs=wanted,
                              request_id="r-1")
        response = result.get_response()
        assert response["model_name"] == NAME and response["model_version"] == str(expected)
        assert response["id"] == "r-1"
        probabilities, labels = served["sessions"][expected].run(None, {"input": x})
        np.testing.assert_array_equal(result.as_numpy("label"), labels)
        np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, atol=1e-6)
    binary = triton.InferInput("input", list(x.shape), "FP32")
    binary.set_data_from_numpy(x)  # tritonclient's default: binary tensor data
    labels = served["sessions"][1].run(["label"], {"input": x})[0]
    np.testing.assert_array_equal(client.infer(NAME, [binary]).as_numpy("label"), labels)
    client.close()


@pytest.mark.parametrize("path, fragment", [
    ("/versions/9/infer", "has no version 9"),
    ("/versions/999999999999999999999999999999/infer",  # past MLflow's integer column: was a 500
     "has no version '999999999999999999999999999999'"),
    ("/versions/abc/infer", "has no version 'abc'"),
    ("/versions/0", "has no version '0'"),
])
def test_unknown_versions_are_404(served, path, fragment):
    reply = requests.post(f"{served['base']}/v2/models/{NAME}{path}",
                          json=_body(served["splits"].x_test[:1]), timeout=30) \
        if path.endswith("infer") else \
        requests.get(f"{served['base']}/v2/models/{NAME}{path}", timeout=30)
    assert reply.status_code == 404, reply.text
    assert fragment in reply.json()["error"]


def test_concurrent_requests_are_batched_but_answered_row_by_row(served):
    x = served["splits"].x_test[:48]
    expected = served["sessions"][1].run(["label"], {"input": x})[0]

    def ask(i: int) -> list[int]:
        rows = x[i:i + 1 + i % 3]
        reply = requests.post(f"{served['base']}/v2/models/{NAME}/infer",
                              json=_body(rows, outputs=[{"name": "label"}]), timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()["outputs"][0]["data"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(32)))
    for i, labels in enumerate(answers):
        assert labels == expected[i:i + 1 + i % 3].tolist()


def test_a_model_replica_loads_no_pandas(served):
    """serve_apps.lean: Ray Serve's optional pandas import is kept out of model replicas (and
    with it ~40 MiB each); what the replica does need still answers (the test above)."""
    import psutil

    replicas = [p for p in psutil.process_iter(["cmdline"])
                if (p.info["cmdline"] or [""])[0].startswith(
                    f"ray::ServeReplica:{model_app_name(NAME)}:")]
    assert replicas
    for replica in replicas:
        libraries = {m.path for m in replica.memory_maps()}
        assert not [path for path in libraries if "/pandas/" in path]
        assert [path for path in libraries if "/onnxruntime/" in path]


def _versions_served(base: str, n: int, x: np.ndarray) -> Counter:
    def ask(_: int) -> str:
        return requests.post(f"{base}/v2/models/{NAME}/infer", json=_body(x),
                             timeout=30).json()["model_version"]

    with ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(ask, range(n)))


def test_canary_takes_its_weight_of_unversioned_traffic(served):
    registry, x = served["registry"], served["splits"].x_test[:1]
    registry.promote(NAME, 2, CANARY)
    deadline = time.monotonic() + 20
    while "2" not in _versions_served(served["base"], 20, x) and time.monotonic() < deadline:
        pass
    counts = _versions_served(served["base"], 400, x)
    assert set(counts) == {"1", "2"}
    assert 0.2 <= counts["2"] / 400 <= 0.4, counts  # canary_weight 0.3
    registry.client.delete_registered_model_alias(NAME, CANARY)
    deadline = time.monotonic() + 20
    while _versions_served(served["base"], 40, x).get("2") and time.monotonic() < deadline:
        pass
    assert _versions_served(served["base"], 100, x) == Counter({"1": 100})


def test_prometheus_counts_requests_by_model_version_and_status(served, metrics_port):
    for _ in range(5):
        requests.post(f"{served['base']}/v2/models/{NAME}/infer",
                      json=_body(served["splits"].x_test[:1]), timeout=30)
    requests.post(f"{served['base']}/v2/models/{NAME}/infer", data=b"{", timeout=30)
    wanted = ("ray_maas_requests_total", "ray_maas_request_latency_ms_bucket",
              "ray_maas_batch_size_bucket", "ray_maas_rows_total")
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        lines = [line for line in text.splitlines() if f'model="{NAME}"' in line]
        if all(any(line.startswith(name) for line in lines) for name in wanted) and any(
                line.startswith("ray_maas_requests_total") and 'status="400"' in line
                for line in lines):
            return
        time.sleep(1.0)
    pytest.fail(f"maas metrics missing from :{metrics_port}/metrics; got "
                f"{[line for line in text.splitlines() if 'maas' in line][:10]}")


def test_replicas_scale_up_under_load_and_back_down(served, deploy_cfg):
    """A model app of its own (no rolling update of the one above), autoscaled 1..3."""
    from ray import serve

    registry = served["registry"]
    current = registry.get(NAME, 1)
    source = registry.load(current)
    path = served["folder"] / "scaled.onnx"
    path.write_bytes(source)
    info = registry.register("scaled", path, run_id=current.source_run, metrics={},
                             variant="fp32", data_fingerprint="test", config_digest="test")
    registry.promote("scaled", info.version)
    scaled = ModelConfig(name="scaled", serve={
        "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
                        "upscale_delay_s": 1, "downscale_delay_s": 2,
                        # averaged over 5 s, not Serve's 30: the load's end shows sooner
                        "look_back_period_s": 5},
        "batching": {"max_batch_size": 1}})
    url = deploy_model(deploy_cfg, scaled)
    app_name = model_app_name("scaled")

    def running() -> int:
        app = serve.status().applications[app_name]
        return app.deployments[app_name].replica_states.get("RUNNING", 0)

    assert running() == 1
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                session.post(url, json=_body(served["splits"].x_test[:64]), timeout=30)

    threads = [threading.Thread(target=load) for _ in range(16)]
    for thread in threads:
        thread.start()
    peak = 1
    try:
        deadline = time.monotonic() + 60
        while peak < 2 and time.monotonic() < deadline:
            peak = max(peak, running())
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert peak >= 2, "no scale-up under 16 concurrent clients"
    deadline = time.monotonic() + 90
    while running() > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        assert running() == 1, "no scale-down after the load stopped"
    finally:
        delete_apps(app_name)


def test_a_full_replica_refuses_at_once_with_503_and_retry_after(served, deploy_cfg):
    """One request at a time and a queue of one: two requests whose bodies are still on the
    way hold the replica and its queue, so the next is refused at once, with Retry-After;
    once they go, requests are answered again."""

    registry = served["registry"]
    current = registry.get(NAME, 1)
    path = served["folder"] / "bounded.onnx"
    path.write_bytes(registry.load(current))
    info = registry.register("bounded", path, run_id=current.source_run, metrics={},
                             variant="fp32", data_fingerprint="test", config_digest="test")
    registry.promote("bounded", info.version)
    bounded = ModelConfig(name="bounded", serve={
        "max_ongoing_requests": 1, "max_queued_requests": 1, "retry_after_s": 3,
        "batching": {"max_batch_size": 1}, "body_timeout_s": 60})
    url = deploy_model(deploy_cfg, bounded)
    wait_for_version(deploy_cfg, bounded, info.version)
    body = _body(served["splits"].x_test[:1])
    held = []
    try:
        for _ in range(2):  # headers and the first byte of a 1000-byte body, then nothing
            sock = socket.create_connection(("127.0.0.1", deploy_cfg.cluster.http_port))
            sock.sendall(b"POST /v2/models/bounded/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            held.append(sock)
        # Until the replica and its queue are full. A probe may get there before the second
        # held request (then that one is refused, and the probe waits in the queue): probes
        # give up after 2 s and the next one finds the queue full.
        deadline, reply = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            try:
                reply = requests.post(url, json=body, timeout=2)
            except requests.Timeout:
                continue
            if reply.status_code == 503:
                break
            time.sleep(0.2)
        assert reply is not None and reply.status_code == 503, reply and reply.text
        assert reply.headers["Retry-After"] == "3"
    finally:
        for sock in held:
            sock.close()
    try:
        deadline = time.monotonic() + 30
        while requests.post(url, json=body, timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "still refused after the held requests left"
            time.sleep(0.2)
    finally:
        delete_apps(model_app_name("bounded"))
