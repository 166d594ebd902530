"""cluster/ manifests parse, and the RayService runs exactly what `maas serve-config` emits."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from maas.cli import app
from maas.config import load_config
from maas.serve_config import serve_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
pytestmark = pytest.mark.unit


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]


@pytest.mark.parametrize("name", ["cluster.yaml", "raycluster.yaml", "rayjob.yaml",
                                  "rayservice.yaml"])
def test_every_manifest_parses(name):
    assert _docs(name)


def test_generated_serve_config_passes_rays_own_schema():
    from ray.serve.schema import ServeDeploySchema

    generated = serve_config(load_config(REPO / "deploy.yaml"))
    schema = ServeDeploySchema.model_validate(generated)
    names = [a.name for a in schema.applications]
    assert names == ["maas-server", "model-digits", "model-digits-cnn", "model-minilm",
                     "model-smollm2", "maas-openai"]
    prefixes = [a.route_prefix for a in schema.applications]
    assert prefixes == ["/", "/v2/models/digits", "/v2/models/digits-cnn",
                        "/v2/models/minilm", "/v2/models/smollm2", "/v1"]


def test_rayservice_serve_config_is_exactly_maas_serve_config():
    (service,) = _docs("rayservice.yaml")
    assert service["kind"] == "RayService"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    result = CliRunner().invoke(app, ["serve-config", str(REPO / "deploy.yaml")])
    assert result.exit_code == 0, result.output
    assert embedded == yaml.safe_load(result.output)


def test_rayjob_runs_the_pipeline_with_token_auth():
    (job,) = _docs("rayjob.yaml")
    assert job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"] == "python -m jobs.pipeline deploy.yaml"
    env = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]
    assert {"name": "RAY_AUTH_MODE", "value": "token"} in env


def test_raycluster_keeps_token_auth_on_every_node():
    cluster = next(d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster")
    pods = [cluster["spec"]["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        env = pod["spec"]["containers"][0]["env"]
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in env
        assert any(e["name"] == "RAY_AUTH_TOKEN" for e in env)


def test_ray_up_config_has_head_and_autoscaling_workers():
    (launcher,) = _docs("cluster.yaml")
    nodes = launcher["available_node_types"]
    assert launcher["head_node_type"] in nodes
    worker = nodes["cpu_worker"]
    assert worker["max_workers"] > worker["min_workers"]
    assert any("RAY_AUTH_MODE=token" in c for c in launcher["head_start_ray_commands"])
    assert any("RAY_AUTH_MODE=token" in c for c in launcher["worker_start_ray_commands"])
