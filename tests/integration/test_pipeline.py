"""train -> export -> serve -> infer on a real local Ray cluster, then the served API itself."""

import re

import numpy as np
import pytest
import requests

from maas.data import load_splits
from maas.runtime import ort_session
from maas.registry import Registry, config_hash
from serve_apps.deploy import wait_for_version
from maas.routes import SERVER_APP, model_app_name
from tests.conftest import delete_apps

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(deploy_cfg):
    """One full pipeline run; its Serve apps are deleted when this module's tests are done."""

    from jobs.pipeline import run_pipeline

    (result,) = run_pipeline(deploy_cfg)
    yield result
    delete_apps(model_app_name("digits"), SERVER_APP)


@pytest.fixture(scope="module")
def registry(deploy_cfg) -> Registry:
    return Registry.from_config(deploy_cfg)


@pytest.fixture(scope="module")
def base(deploy_cfg) -> str:
    return f"http://127.0.0.1:{deploy_cfg.cluster.http_port}"


@pytest.fixture(scope="module")
def splits(deploy_cfg):
    return load_splits(deploy_cfg.models[0].data)


def _infer_body(rows: np.ndarray) -> dict:
    return {"id": "t-1", "inputs": [{"name": "input", "shape": list(rows.shape),
                                     "datatype": "FP32", "data": rows.tolist()}]}


def test_pipeline_trains_exports_and_serves(report, deploy_cfg):
    assert report.held_out_accuracy >= 0.90
    assert report.max_abs_diff <= deploy_cfg.models[0].export.parity_atol
    assert report.version == 1 and report.variant == "fp32"
    assert report.promoted and report.served_version == 1
    assert "version 1 promoted to production" in report.promotion
    assert report.endpoint == (f"http://127.0.0.1:{deploy_cfg.cluster.http_port}"
                               f"/v2/models/digits/infer")
    assert report.served_answer in range(10)
    assert report.run_name.startswith("digits-")


def test_served_predictions_equal_local_onnx_runtime(report, base, splits, registry):
    rows = splits.x_test[:64]
    reply = requests.post(f"{base}/v2/models/digits/infer", json=_infer_body(rows), timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model_name"] == "digits" and body["model_version"] == "1" and body["id"] == "t-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [64, 10]
    served_labels = np.array(outputs["label"]["data"])
    model_bytes = registry.load(registry.get("digits"))
    local_probs, local_labels = ort_session(model_bytes).run(None, {"input": rows})
    np.testing.assert_array_equal(served_labels, local_labels)
    np.testing.assert_allclose(np.array(outputs["probabilities"]["data"]).reshape(64, 10),
                               local_probs, atol=1e-6)
    assert (served_labels == splits.y_test[:64]).mean() >= 0.9


def test_output_selection_returns_only_what_was_asked(report, base, splits):
    body = _infer_body(splits.x_test[:2]) | {"outputs": [{"name": "label"}]}
    reply = requests.post(f"{base}/v2/models/digits/infer", json=body, timeout=30)
    assert reply.status_code == 200
    assert [o["name"] for o in reply.json()["outputs"]] == ["label"]


def test_health_and_metadata(report, base):
    ready = requests.get(f"{base}/v2/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert requests.get(f"{base}/v2/health/live", timeout=10).json()["live"] is True
    server = requests.get(f"{base}/v2", timeout=10)
    assert server.status_code == 200 and server.json()["name"] == "maas"
    meta = requests.get(f"{base}/v2/models/digits", timeout=10)
    assert meta.status_code == 200
    assert meta.json()["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert requests.get(f"{base}/v2/models/digits/ready", timeout=10).status_code == 200


def test_one_server_document_and_a_docs_page_at_the_root(report, base):
    document = requests.get(f"{base}/openapi.json", timeout=10).json()
    paths = set(document["paths"])
    assert {"/", "/v2", "/v2/health/ready", "/v2/catalog", "/v2/models/digits",
            "/v2/models/digits/infer", "/v2/models/digits/versions/{version}/infer"} <= paths
    operation_ids = [op["operationId"] for ops in document["paths"].values()
                     for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
    # Swagger UI, with its script served by the app itself (no CDN is reachable here).
    page = requests.get(f"{base}/docs", timeout=10)
    assert page.status_code == 200 and "/openapi.json" in page.text
    script = re.search(r"src=['\"]([^'\"]+swagger-ui-bundle\.js)['\"]", page.text).group(1)
    asset = requests.get(f"{base}{script}", timeout=10)
    assert asset.status_code == 200 and len(asset.content) > 100_000
    home = requests.get(f"{base}/", timeout=10).json()
    assert home["docs"] == "/docs" and home["catalog"] == "/v2/catalog"
    assert home["models"] == {"digits": "/v2/models/digits/infer"}
    html = requests.get(f"{base}/", headers={"Accept": "text/html"}, timeout=10)
    assert html.headers["content-type"].startswith("text/html") and 'href="/docs"' in html.text
    assert "<title>maas console</title>" in html.text  # a browser gets the console
    # Every app keeps its own document too.
    assert requests.get(f"{base}/v2/models/digits/openapi.json", timeout=10).status_code == 200


@pytest.mark.parametrize("body, status, fragment", [
    ({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
     400, "inputs[0].shape[1]"),
    ({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]},
     400, "inputs[0].name: unknown input 'pixels'"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT8", "data": [0] * 64}]},
     400, "inputs[0].datatype"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]},
     400, "inputs[0].data: Field required"),
    ({"inputs": []}, 400, "inputs: List should have at least 1 item"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}],
      "outputs": [{"name": "logits"}]}, 400, "outputs: unknown output(s) ['logits']"),
])
def test_bad_requests_get_400_naming_the_field(report, base, body, status, fragment):
    reply = requests.post(f"{base}/v2/models/digits/infer", json=body, timeout=10)
    assert reply.status_code == status, reply.text
    assert fragment in reply.json()["error"]


def test_non_json_body_is_a_400(report, base):
    reply = requests.post(f"{base}/v2/models/digits/infer", data=b"{not json",
                          headers={"Content-Type": "application/json"}, timeout=10)
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]


def test_unknown_model_is_a_404(report, base):
    reply = requests.post(f"{base}/v2/models/nope/infer", json={}, timeout=10)
    assert reply.status_code == 404
    assert "unknown model 'nope'" in reply.json()["error"] and "digits" in reply.json()["error"]


def test_mlflow_run_records_params_and_every_epoch(report, deploy_cfg):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=deploy_cfg.tracking_uri)
    run = client.get_run(report.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.workers"] == "2"
    assert run.data.metrics["held_out_accuracy"] == pytest.approx(report.held_out_accuracy)
    history = client.get_metric_history(report.mlflow_run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(deploy_cfg.models[0].train.epochs))
    losses = client.get_metric_history(report.mlflow_run_id, "train_loss")
    assert len(losses) == deploy_cfg.models[0].train.epochs
    assert losses[-1].value < losses[0].value
    assert run.data.tags["maas.data_fingerprint"]
    assert run.data.tags["maas.registered_version"] == "1"
    artifact_names = {a.path for a in client.list_artifacts(report.mlflow_run_id)}
    assert {"registered", "training_curve.png", "config.json"} <= artifact_names


def test_the_registered_version_records_its_lineage(report, deploy_cfg, registry):
    info = registry.get("digits", report.version)
    run = registry.client.get_run(report.mlflow_run_id)
    assert info.source_run == report.mlflow_run_id
    assert info.data_fingerprint == run.data.tags["maas.data_fingerprint"]
    assert info.config_hash == config_hash(deploy_cfg.models[0])
    assert info.metrics["held_out_accuracy"] == pytest.approx(report.held_out_accuracy)
    assert info.aliases == ["production"] and info.variant == "fp32"
    assert info.source.startswith(run.info.artifact_uri + "/registered/digits/")


def test_promoting_a_new_version_switches_what_is_served(report, deploy_cfg, base, splits,
                                                          registry, tmp_path):
    model_cfg = deploy_cfg.models[0]
    current = registry.get("digits")
    copy = tmp_path / "model.onnx"
    copy.write_bytes(registry.load(current))
    info = registry.register("digits", copy, run_id=report.mlflow_run_id,
                             metrics=current.metrics, variant=current.variant,
                             data_fingerprint=current.data_fingerprint,
                             config_digest=current.config_hash)
    assert info.version == 2
    assert registry.promote("digits", info.version) == 1
    # No redeploy: the replicas notice the alias and swap the verified new version in.
    wait_for_version(deploy_cfg, model_cfg, info.version)
    reply = requests.post(f"{base}/v2/models/digits/infer", json=_infer_body(splits.x_test[:1]),
                          timeout=30)
    assert reply.status_code == 200 and reply.json()["model_version"] == "2"
    assert requests.get(f"{base}/v2/models/digits", timeout=10).json()["versions"] == ["1", "2"]
    pinned = requests.post(f"{base}/v2/models/digits/versions/1/infer",
                           json=_infer_body(splits.x_test[:1]), timeout=30)
    assert pinned.status_code == 200 and pinned.json()["model_version"] == "1"


def test_a_failed_run_says_why_and_where_the_full_log_is(deploy_cfg, tmp_path, capfd):
    """`maas run` on data that does not exist: the error on the terminal, exit code 1, and
    the log (in the Ray session's log folder) named."""
    import yaml

    from jobs.pipeline import run_cli

    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "cluster": {"http_port": deploy_cfg.cluster.http_port},
        "models": [{"name": "broken", "data": {"source": "missing.npz"}}]}))
    assert run_cli(config, "broken-run", verbose=False, json_out=False) == 1
    err = capfd.readouterr().err
    assert "pipeline failed: data.source: file 'missing.npz' does not exist" in err
    log = re.search(r"full logs: (\S+)", err).group(1)
    assert log.endswith("maas-pipeline-broken-run.log") and "/logs/" in log
