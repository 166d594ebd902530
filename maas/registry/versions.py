"""What a registered version is, as its MLflow tags describe it, and the registry's errors.

Tags on every version (what a replica or an auditor needs without opening the file):

    sha256            of the ONNX model (the plaintext, when encrypted)
    artifact_sha256   of the stored file, checked before anything is decrypted or parsed
    encrypted         "true" / "false"
    variant, opset, signature (inputs and outputs as JSON), data_fingerprint, config_hash,
    source_run, metric.<name> (held-out metrics of this variant)
    kind              "onnx" (tensors in, tensors out) or "text-embedding" (maas.text)
    assets            files served with the model (a tokenizer), each {sha256, artifact_sha256}
                      as JSON; stored beside it, encrypted like it, verified like it
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from maas.config import ModelConfig
from maas.errors import MaasError
from maas.oip import ONNX_ELEM_TO_DATATYPE, TensorSpec

PRODUCTION = "production"
CANARY = "canary"
ALIASES = (PRODUCTION, CANARY)
HISTORY_TAG = "maas.production_history"
MODEL_FILE = "model.onnx"
METRIC_PREFIX = "metric."
LINEAGE_PREFIX = "lineage."
# MLflow stores version numbers in an integer column: a larger number can name no version
# (and SQLite fails on it with an error that is not "does not exist").
MAX_VERSION = 2**31 - 1


class RegistryError(MaasError):
    """A registry operation that cannot be done as asked; the message says what to do. A
    version that exists but cannot be used now is a 503."""

    status = 503


class ModelNotFound(RegistryError):
    """No registered model of that name."""

    status = 404


class VersionNotFound(RegistryError):
    """The model has no such version (or no version behind that alias)."""

    status = 404


class IntegrityError(RegistryError):
    """The stored bytes are not the bytes that were registered."""


class AssetInfo(BaseModel):
    """A file registered with a version (sha256 of its content, and of the stored file)."""

    sha256: str
    artifact_sha256: str


class VersionInfo(BaseModel):
    """One registered model version, as its tags describe it."""

    name: str
    version: int
    aliases: list[str]
    created_at: str
    description: str
    sha256: str
    artifact_sha256: str
    encrypted: bool
    variant: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: dict[str, float]
    data_fingerprint: str
    config_hash: str
    source_run: str | None
    source: str  # artifact folder URI
    kind: str = "onnx"
    assets: dict[str, AssetInfo] = {}
    lineage: dict[str, str] = {}  # a fine-tune's base, data, method and evaluations


class ModelSummary(BaseModel):
    name: str
    description: str
    aliases: dict[str, int]
    versions: int
    latest_version: int | None
    updated_at: str


def is_version_number(text: str) -> bool:
    """Whether ``text`` names a version by number: ASCII digits only (``str.isdigit()`` also
    admits '³', which ``int()`` cannot read)."""
    return text.isascii() and text.isdecimal()


def resolve(name: str, ref: int | str | None, aliases: dict[str, int]) -> int:
    """The version number ``ref`` names: a number as given, an alias (``None``:
    ``production``) looked up in ``aliases`` (VersionNotFound when it is not set)."""
    if ref is None or isinstance(ref, str) and not is_version_number(ref):
        alias = ref or PRODUCTION
        if alias not in aliases:
            raise VersionNotFound(
                f"model {name!r} has no {alias!r} version (aliases: {aliases or 'none'}); "
                f"`maas models promote {name} VERSION --alias {alias}` sets one")
        return aliases[alias]
    return int(ref)


def no_version(name: str, ref: int | str | None, known: list[int]) -> VersionNotFound:
    """The refusal for a version ``name`` does not have (``known``: the ones it has)."""
    return VersionNotFound(f"model {name!r} has no version {ref}; versions: {known}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_hash(model_cfg: ModelConfig) -> str:
    """A stable hash of one model's resolved settings (defaults included)."""
    canonical = json.dumps(model_cfg.model_dump(mode="json"), sort_keys=True,
                           separators=(",", ":"))
    return sha256_bytes(canonical.encode())


def onnx_signature(model_bytes: bytes) -> tuple[int, list[TensorSpec], list[TensorSpec]]:
    """(opset, inputs, outputs) read from the ONNX graph; symbolic axes become -1."""
    import onnx

    graph_model = onnx.load_from_string(model_bytes)

    def specs(values: Any) -> list[TensorSpec]:
        out = []
        for value in values:
            tensor_type = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
            out.append(TensorSpec(name=value.name, shape=shape,
                                  datatype=ONNX_ELEM_TO_DATATYPE[tensor_type.elem_type]))
        return out

    opset = next(o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx"))
    return opset, specs(graph_model.graph.input), specs(graph_model.graph.output)


def millis_iso(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(timespec="seconds")


def version_info(mv: Any, aliases: dict[str, int]) -> VersionInfo:
    """An MLflow ``ModelVersion`` read through its tags."""
    tags = mv.tags
    missing = [k for k in ("sha256", "artifact_sha256", "signature") if k not in tags]
    if missing:
        raise RegistryError(f"model {mv.name!r} version {mv.version} lacks the tags "
                            f"{missing}: it was not registered by maas")
    signature = json.loads(tags["signature"])
    return VersionInfo(
        name=mv.name, version=int(mv.version),
        aliases=sorted(a for a, v in aliases.items() if v == int(mv.version)),
        created_at=millis_iso(mv.creation_timestamp), description=mv.description or "",
        sha256=tags["sha256"], artifact_sha256=tags["artifact_sha256"],
        encrypted=tags.get("encrypted") == "true", variant=tags.get("variant", "?"),
        opset=int(tags.get("opset", 0)),
        inputs=[TensorSpec(**s) for s in signature["inputs"]],
        outputs=[TensorSpec(**s) for s in signature["outputs"]],
        metrics={k.removeprefix(METRIC_PREFIX): float(v) for k, v in tags.items()
                 if k.startswith(METRIC_PREFIX)},
        data_fingerprint=tags.get("data_fingerprint", ""),
        config_hash=tags.get("config_hash", ""), source_run=mv.run_id or None,
        source=mv.source, kind=tags.get("kind", "onnx"),
        assets={f: AssetInfo(**a) for f, a in json.loads(tags.get("assets", "{}")).items()},
        lineage={k.removeprefix(LINEAGE_PREFIX): v for k, v in tags.items()
                 if k.startswith(LINEAGE_PREFIX)})
