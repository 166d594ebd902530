"""cluster/ manifests parse, Kubernetes would accept them (KubeRay's CRDs, core schemas), and the
RayService runs exactly what `maas serve-config` emits; credentials come from Secrets, and the
NetworkPolicies select the pods the manifests make."""

import copy
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from maas.cli import app
from maas.config import load_config
from maas.serve_config import serve_config
from tests.kube_schema import CRD_FILES, KUBERAY, problems

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
# Every manifest but cluster.yaml, which is `ray up`'s launcher config, not a Kubernetes object.
KUBE_MANIFESTS = sorted(p.name for p in CLUSTER.glob("*.yaml") if p.name != "cluster.yaml")
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


def test_the_manifests_hold_every_kuberay_kind():
    assert {d["kind"] for name in KUBE_MANIFESTS for d in _docs(name)} >= set(CRD_FILES)


def test_kuberays_crds_are_beside_the_checkout():
    missing = [n for n in CRD_FILES.values() if not (KUBERAY / n).is_file()]
    assert not missing, (f"{KUBERAY} lacks {missing}: the manifest tests validate against "
                         "KubeRay's CRDs there (shared/kuberay beside the checkout, as in CI)")


@pytest.mark.parametrize("name", KUBE_MANIFESTS)
def test_kubernetes_accepts_every_manifest(name):
    for i, doc in enumerate(_docs(name)):
        assert problems(doc, f"cluster/{name}#{i}") == []


# Each mutation below is one mistake Kubernetes refuses; the error must name its JSON path.
def _set(*keys: str | int, value: object) -> Callable[[dict], None]:
    return lambda doc: _at(doc, keys[:-1]).__setitem__(keys[-1], value)


def _drop(*keys: str | int) -> Callable[[dict], None]:
    return lambda doc: _at(doc, keys[:-1]).pop(keys[-1])


def _rename(*keys: str | int, to: str) -> Callable[[dict], None]:
    return lambda doc: _at(doc, keys[:-1]).__setitem__(to, _at(doc, keys[:-1]).pop(keys[-1]))


def _at(doc: Any, keys: tuple) -> Any:
    for key in keys:
        doc = doc[key]
    return doc


HEAD = ("spec", "headGroupSpec")
WORKER = ("spec", "workerGroupSpecs", 0)
SUBMITTER = ("spec", "submitterPodTemplate", "spec", "containers", 0)
SERVICE = ("spec", "rayClusterConfig")
BROKEN = [
    ("raycluster.yaml", _rename(*HEAD, to="headGroupSpc"), "$.spec.headGroupSpc: unknown field"),
    ("raycluster.yaml", _rename(*HEAD, "rayStartParams", to="rayStartParam"),
     "$.spec.headGroupSpec.rayStartParam: unknown field"),
    ("raycluster.yaml", _set(*WORKER, "replicas", value="two"),
     "$.spec.workerGroupSpecs[0].replicas: 'two' is not of type 'integer'"),
    ("raycluster.yaml", _drop(*WORKER, "groupName"),
     "$.spec.workerGroupSpecs[0].groupName: required field is missing"),
    ("raycluster.yaml", _set(*HEAD, "template", "spec", "containers", 0, "resources", "limits",
                             "cpu", value=[2]),
     "$.spec.headGroupSpec.template.spec.containers[0].resources.limits.cpu"),
    ("raycluster.yaml", _set(*HEAD, "template", "spec", "containers", 0, "env", value=[
        {"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
     "$.spec.headGroupSpec.template.spec.containers[0].env: duplicate item ['A']"),
    ("raycluster.yaml", _set("metadata", "name", value="Maas_Cluster"), "$.metadata.name"),
    ("raycluster.yaml", _set("apiVersion", value="ray.io/v2"),
     "$.apiVersion: RayCluster 'ray.io/v2' is not served"),
    ("rayjob.yaml", _rename("spec", "entrypoint", to="entryPoint"),
     "$.spec.entryPoint: unknown field"),
    ("rayjob.yaml", _set("spec", "backoffLimit", value="two"),
     "$.spec.backoffLimit: 'two' is not of type 'integer'"),
    ("rayjob.yaml", _drop(*SUBMITTER, "name"),
     "$.spec.submitterPodTemplate.spec.containers[0].name: required field is missing"),
    ("rayjob.yaml", _drop("metadata", "name"), "$.metadata.name: required field is missing"),
    ("rayservice.yaml", _rename(*SERVICE, "workerGroupSpecs", to="workerGroupSpec"),
     "$.spec.rayClusterConfig.workerGroupSpec: unknown field"),
    ("rayservice.yaml", _set(*SERVICE, "workerGroupSpecs", 0, "replicas", value="two"),
     "$.spec.rayClusterConfig.workerGroupSpecs[0].replicas: 'two' is not of type 'integer'"),
    ("rayservice.yaml", _drop(*SERVICE, "headGroupSpec", "template"),
     "$.spec.rayClusterConfig.headGroupSpec.template: required field is missing"),
]


@pytest.mark.parametrize(("name", "mutate", "expected"), BROKEN,
                         ids=[f"{name}:{expected.split(':')[0]}" for name, _, expected in BROKEN])
def test_a_broken_kuberay_manifest_is_refused_with_its_path(name, mutate, expected):
    doc = copy.deepcopy(_docs(name)[0])
    mutate(doc)
    found = problems(doc, f"cluster/{name}#0")
    assert any(expected in line for line in found), found
    assert all(line.startswith(f"cluster/{name}#0: ") for line in found)


def test_an_int_or_string_quantity_takes_an_integer():
    doc = copy.deepcopy(_docs("raycluster.yaml")[0])
    _set(*HEAD, "template", "spec", "containers", 0, "resources", "limits", "cpu", value=2)(doc)
    assert problems(doc, "raycluster.yaml#0") == []


@pytest.mark.parametrize(("mutate", "expected"), [
    (_rename("spec", "accessModes", to="accesModes"), "$.spec.accesModes: unknown field"),
    (_set("spec", "resources", "requests", "storage", value=[20]),
     "$.spec.resources.requests.storage"),
    (_set("kind", value="PersistentVolumeClaims"), "is kind 'PersistentVolumeClaims' spelt"),
], ids=["misspelt", "wrong-type", "unknown-kind"])
def test_a_broken_core_object_is_refused(mutate, expected):
    pvc = copy.deepcopy(next(d for d in _docs("raycluster.yaml")
                             if d["kind"] == "PersistentVolumeClaim"))
    mutate(pvc)
    assert any(expected in line for line in problems(pvc, "raycluster.yaml#1"))


def test_missing_crds_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        problems(_docs("rayjob.yaml")[0], "rayjob.yaml#0", crd_dir=tmp_path)


# ---- beyond one machine: credentials, and who may reach what ---------------------------------

def _objects() -> list[dict]:
    return [doc for name in KUBE_MANIFESTS for doc in _docs(name)]


def _ray_groups() -> list[tuple[dict, str, dict]]:
    """(RayCluster or RayService, node type, group spec) of every Ray node group."""
    found = []
    for doc in _objects():
        if doc["kind"] in ("RayCluster", "RayService"):
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterConfig"]
            found += [(doc, "head", spec["headGroupSpec"])]
            found += [(doc, "worker", group) for group in spec["workerGroupSpecs"]]
    return found


def _pod_templates() -> list[tuple[str, dict]]:
    """(where, pod template) of every pod the manifests make, with the labels it will carry:
    KubeRay adds ray.io/cluster (the RayCluster's name) and ray.io/node-type to Ray pods."""
    found = []
    for doc, node_type, group in _ray_groups():
        template = copy.deepcopy(group["template"])
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels["ray.io/node-type"] = node_type
        if doc["kind"] == "RayCluster":  # a RayService's cluster is named maas-<random>
            labels["ray.io/cluster"] = doc["metadata"]["name"]
        found.append((f"{doc['kind']} {doc['metadata']['name']} {node_type}", template))
    for doc in _objects():
        if doc["kind"] == "RayJob":
            found.append((f"RayJob {doc['metadata']['name']}", doc["spec"]["submitterPodTemplate"]))
        elif doc["kind"] in ("Deployment", "StatefulSet"):
            found.append((f"{doc['kind']} {doc['metadata']['name']}", doc["spec"]["template"]))
    return found


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions) selects ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if ((op == "In" and value not in expr["values"])
                or (op == "NotIn" and value in expr["values"])
                or (op == "Exists" and value is None) or (op == "DoesNotExist" and value)):
            return False
    return True


def _labels(template: dict) -> dict[str, str]:
    return template.get("metadata", {}).get("labels", {})


def test_every_credential_comes_from_a_secret_and_no_url_holds_a_password():
    for where, template in _pod_templates():
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            for env in container.get("env", []):
                if re.search(r"TOKEN|PASSWORD|KEY$", env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), (where, env)
    text = "\n".join((CLUSTER / name).read_text() for name in KUBE_MANIFESTS)
    assert not re.findall(r"postgresql[+\w]*://[^@/\s]*:[^@/\s]*@", text)


def test_the_secrets_template_holds_only_placeholders():
    secrets = [d for d in _objects() if d["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} >= {"maas-ray-token", "maas-model-key",
                                                        "maas-postgres"}
    for secret in secrets:
        assert "data" not in secret
        assert all(v.startswith("REPLACE-ME") for v in secret["stringData"].values()), secret


def test_kuberays_operator_gets_the_token_and_the_head_services_do_not_collide():
    """KubeRay names a RayCluster's head Service <name>-head-svc and a RayService's the same
    way: one name for both would let the RayService take over the RayCluster's."""
    cluster = next(d for d in _objects() if d["kind"] == "RayCluster")
    service = next(d for d in _objects() if d["kind"] == "RayService")
    assert cluster["metadata"]["name"] != service["metadata"]["name"]
    for spec in (cluster["spec"], service["spec"]["rayClusterConfig"]):
        assert spec["authOptions"] == {"mode": "token", "secretName": "maas-ray-token"}


def _each_value(selector: dict) -> list[dict]:
    """``selector`` once per value of its `In` expressions: a misspelt value selects nothing."""
    choices = [[{**e, "values": [v]} for v in e["values"]] if e["operator"] == "In" else [e]
               for e in selector.get("matchExpressions", [])]
    return [{**selector, "matchExpressions": list(one)} for one in itertools.product(*choices)]


def test_every_network_policy_selects_pods_the_manifests_make():
    pods = _pod_templates()
    for policy in (d for d in _objects() if d["kind"] == "NetworkPolicy"):
        name, spec = policy["metadata"]["name"], policy["spec"]
        selectors = [spec["podSelector"]] if spec["podSelector"] else []
        selectors += [peer["podSelector"] for rule in spec.get("ingress", [])
                      for peer in rule["from"]
                      if "podSelector" in peer and "namespaceSelector" not in peer]
        for selector in (one for s in selectors for one in _each_value(s)):
            assert any(_selects(selector, _labels(t)) for _, t in pods), (name, selector)


def test_only_the_dashboard_metrics_and_serve_ports_open_beyond_maas_pods():
    """Other namespaces reach the dashboard (KubeRay's operator), the metrics (Prometheus) and,
    on the RayService's pods only, Serve's HTTP port; never the GCS or any other Ray port."""
    from maas.config import ClusterConfig

    defaults = ClusterConfig()
    opened = set()
    for policy in (d for d in _objects() if d["kind"] == "NetworkPolicy"):
        target = policy["spec"]["podSelector"].get("matchLabels", {})
        for rule in policy["spec"].get("ingress", []):
            if any("namespaceSelector" in peer for peer in rule["from"]):
                assert rule.get("ports"), (policy["metadata"]["name"], rule)
                opened |= {(tuple(sorted(target.items())), p["port"]) for p in rule["ports"]}
    train, serve = (("ray.io/cluster", "maas-train"),), (("app.kubernetes.io/component",
                                                          "ray-serve"),)
    assert opened == {(train, defaults.dashboard_port), (train, defaults.metrics_port),
                      (serve, defaults.dashboard_port), (serve, defaults.metrics_port),
                      (serve, defaults.http_port)}
    for doc, node_type, group in _ray_groups():  # else KubeRay starts Ray with 8080
        assert group["rayStartParams"]["metrics-export-port"] == str(defaults.metrics_port), (
            doc["metadata"]["name"], node_type)
