"""Check Kubernetes manifests offline, as the API server would on `kubectl apply` (test support).

KubeRay kinds are checked against KubeRay's own CRDs (../shared/kuberay, see its README.md),
every other kind against kubernetes-validate's strict core schemas. Run by
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_manifests.py
"""

import difflib
import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERAY = Path(__file__).resolve().parents[2] / "shared" / "kuberay"  # beside the checkout
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
# The oldest and newest Kubernetes whose schemas kubernetes-validate 1.37 ships: a core object
# both accept is accepted by every release between them.
KUBERNETES_VERSIONS = ("1.25", "1.37")
# The C loader reads the 1.4 MB RayJob CRD in 0.5 s, the pure-Python one in 1.5 s.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# The API server checks ObjectMeta itself (the CRDs say only `metadata: {type: object}`): the
# fields a manifest may set, and Kubernetes' name rules (k8s.io/apimachinery IsDNS1123Subdomain).
OBJECT_META: dict[str, Any] = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253,
                 "pattern": rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": rf"^{_DNS1123_LABEL}$"},
        "labels": _STRING_MAP, "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict) -> Any:
    """x-kubernetes-list-type: the API server rejects duplicate items of a set, or keys of a map."""
    if list_type not in ("set", "map") or not validator.is_type(instance, "array"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: set[str] = set()
    for item in instance:
        mapped = list_type == "map" and isinstance(item, dict)
        key = repr([item.get(k) for k in keys] if mapped else item)
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate item {key} in a list-type={list_type}")
        seen.add(key)


# OpenAPI v3 schemas are JSON Schema draft 4 (boolean exclusiveMinimum, no const).
_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator,
                                          {"x-kubernetes-list-type": _list_type})


def structural(node: Any) -> Any:
    """A copy of a CRD schema in which plain JSON Schema rejects what Kubernetes rejects."""
    if isinstance(node, list):
        return [structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural(v) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    # Kubernetes prunes fields its schema does not name, and strict field validation (kubectl's
    # default, --validate=strict) rejects them: a misspelt field is an error, not a no-op.
    if (out.get("type") == "object" and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _served(kind: str, crd_dir: Path) -> dict[str, dict]:
    """The openAPIV3Schema of each version `kind`'s CRD serves, by apiVersion (ray.io/v1)."""
    path = crd_dir / CRD_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"KubeRay's CRD {path} is missing: put shared/kuberay (see its "
                                "README.md) beside the checkout, as CI does")
    crd = yaml.load(path.read_text(), Loader=_LOADER)
    group = crd["spec"]["group"]
    return {f"{group}/{v['name']}": v["schema"]["openAPIV3Schema"]
            for v in crd["spec"]["versions"] if v.get("served")}


@functools.cache
def crd_validator(kind: str, api_version: str, crd_dir: Path = KUBERAY) -> Any:
    """The validator for `kind` at an `api_version` its CRD serves (KeyError for others)."""
    schema = structural(_served(kind, crd_dir)[api_version])
    schema["required"] = ["apiVersion", "kind", "metadata"]
    # metadata is ObjectMeta, checked by OBJECT_META; status is the operator's to write.
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"].pop("status", None)
    return _Validator(schema)


def _unknown(path: str, close: list[str], known: list[str]) -> str:
    fix = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known) or '-'}"
    return f"{path}: unknown field (Kubernetes rejects it); {fix}"


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """One line per problem, each naming the JSON path of the field at fault."""
    path = error.json_path
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = list(error.schema.get("properties", {}))
        return [_unknown(f"{path}.{field}", difflib.get_close_matches(field, known, n=1), known)
                for field in sorted(set(error.instance) - set(known))]
    if error.validator == "required":
        field = error.message.split("'")[1]
        return [f"{path}.{field}: required field is missing"]
    return [f"{path}: {error.message}"]


def problems(doc: dict, where: str, crd_dir: Path = KUBERAY) -> list[str]:
    """Why Kubernetes would refuse `doc` (one document of file `where`); empty when it accepts."""
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return [f"{where}: $: a Kubernetes object needs string apiVersion and kind"]
    errors = list(_Validator({"required": ["metadata"], "properties": {"metadata": OBJECT_META}})
                  .iter_errors(doc))
    if kind in CRD_FILES:
        if api_version not in (served := _served(kind, crd_dir)):
            return [f"{where}: $.apiVersion: {kind} {api_version!r} is not served by "
                    f"{crd_dir / CRD_FILES[kind]}; use one of {sorted(served)}"]
        errors += crd_validator(kind, api_version, crd_dir).iter_errors(doc)
    else:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(exc)
            except kubernetes_validate.SchemaNotFoundError as exc:
                return [f"{where}: {exc.message}; is kind {kind!r} spelt right?"]
    lines = sorted({line for e in errors for line in _describe(e)})
    return [f"{where}: {line}" for line in lines]
