"""Model versions in the MLflow Model Registry, with artifacts verified on every load.

One registered model per ``models[].name``; every pipeline run adds a version. The ONNX file
is stored with the run that made it (``registered/<name>/<id>/model.onnx``, or
``model.onnx.enc`` when ``registry.encrypt`` is on) and the version carries, as tags, what a
replica or an auditor needs without opening it:

    sha256            of the ONNX model (the plaintext, when encrypted)
    artifact_sha256   of the stored file, checked before anything is decrypted or parsed
    encrypted         "true" / "false"
    variant, opset, signature (inputs and outputs as JSON), data_fingerprint, config_hash,
    source_run, metric.<name> (held-out metrics of this variant)
    kind              "onnx" (tensors in, tensors out) or "text-embedding" (maas.text)
    assets            files served with the model (a tokenizer), each {sha256, artifact_sha256}
                      as JSON; stored beside it, encrypted like it, verified like it

Aliases: ``production`` is what the unversioned URL serves; ``canary`` is a candidate. The
registered model's ``maas.production_history`` tag lists every version that held
``production``, in order, so ``rollback`` knows where to go back to.

The registry owns the one version sequence: MLflow numbers versions inside a database
transaction (and retries on conflict), so concurrent registrations never share a number, and
each writes its artifact to a fresh folder first, so none overwrites another's file.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from maas import crypto
from maas.config import DeployConfig, ModelConfig, PromotionConfig
from maas.oip import ONNX_ELEM_TO_DATATYPE, TensorSpec

PRODUCTION = "production"
CANARY = "canary"
ALIASES = (PRODUCTION, CANARY)
HISTORY_TAG = "maas.production_history"
ARTIFACT_DIR = "registered"
MODEL_FILE = "model.onnx"
METRIC_PREFIX = "metric."


class RegistryError(Exception):
    """A registry operation that cannot be done as asked; the message says what to do."""


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


class ModelSummary(BaseModel):
    name: str
    description: str
    aliases: dict[str, int]
    versions: int
    latest_version: int | None
    updated_at: str


# MLflow stores version numbers in an integer column: a larger number can name no version
# (and SQLite fails on it with an error that is not "does not exist").
MAX_VERSION = 2**31 - 1


def is_version_number(text: str) -> bool:
    """Whether ``text`` names a version by number: ASCII digits only (``str.isdigit()`` also
    admits '³', which ``int()`` cannot read)."""
    return text.isascii() and text.isdecimal()


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


def _millis_iso(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(timespec="seconds")


def _sealed(filename: str) -> str:
    """The stored name of an encrypted file (model.onnx -> model.onnx.enc)."""
    return f"{filename}.enc"


def _context(name: str, sha256: str) -> bytes:
    """AES-GCM associated data: an encrypted file opens only as this model's, this content."""
    return f"maas:{name}:{sha256}".encode()


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def gate(promotion: PromotionConfig, candidate: VersionInfo,
         production: VersionInfo | None) -> GateDecision:
    """Whether ``candidate`` may replace ``production`` under ``promotion``'s thresholds."""
    metrics = candidate.metrics
    if "min_cosine" in metrics:  # an embedder: registered only at pretrained.min_cosine or above
        return GateDecision(True, f"min cosine {metrics['min_cosine']:.4f} with the pretrained "
                                  f"model's own embeddings")
    if "held_out_accuracy" in metrics:
        accuracy = metrics["held_out_accuracy"]
        if promotion.min_accuracy is not None and accuracy < promotion.min_accuracy:
            return GateDecision(False, f"held-out accuracy {accuracy:.4f} < "
                                       f"promotion.min_accuracy {promotion.min_accuracy}")
        current = None if production is None else production.metrics.get("held_out_accuracy")
        if current is not None and accuracy < current - promotion.max_regression:
            return GateDecision(False, f"held-out accuracy {accuracy:.4f} is more than "
                                       f"promotion.max_regression {promotion.max_regression} "
                                       f"below production version {production.version}'s "
                                       f"{current:.4f}")
        return GateDecision(True, f"held-out accuracy {accuracy:.4f}")
    rmse = metrics.get("held_out_rmse")
    current = None if production is None else production.metrics.get("held_out_rmse")
    if rmse is not None and current is not None and rmse > current + promotion.max_regression:
        return GateDecision(False, f"held-out RMSE {rmse:.4f} is more than "
                                   f"promotion.max_regression {promotion.max_regression} above "
                                   f"production version {production.version}'s {current:.4f}")
    return GateDecision(True, "held-out RMSE " + ("n/a" if rmse is None else f"{rmse:.4f}"))


class Registry:
    """maas's view of an MLflow Model Registry (an explicit client, no global MLflow state)."""

    def __init__(self, uri: str, key_env: str = "MAAS_MODEL_KEY", encrypt: bool = False,
                 tracking_uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.key_env = key_env
        self.encrypt = encrypt
        # The tracking side is only used to store a new version's file with its run.
        self.client = MlflowClient(tracking_uri=tracking_uri or uri, registry_uri=uri)

    @classmethod
    def from_config(cls, cfg: DeployConfig) -> Registry:
        cfg.state_path.mkdir(parents=True, exist_ok=True)
        return cls(cfg.registry_uri, cfg.registry.key_env, cfg.registry.encrypt,
                   tracking_uri=cfg.tracking_uri)

    def require_key(self) -> None:
        """Fail now, not after training, when encryption is on and the key is unusable."""
        if self.encrypt:
            self._key()

    # ---- writing ------------------------------------------------------------------------

    def register(self, name: str, onnx_path: Path, *, run_id: str, metrics: dict[str, float],
                 variant: str, data_fingerprint: str, config_digest: str,
                 description: str = "", kind: str = "onnx",
                 signature: tuple[list[TensorSpec], list[TensorSpec]] | None = None,
                 assets: dict[str, bytes] | None = None) -> VersionInfo:
        """Store ``onnx_path`` (and ``assets``, by file name) with run ``run_id`` and add it as
        the next version of ``name``. ``signature`` (inputs, outputs) is what clients send
        and get, when that is not the graph's own (a text model takes text, not token ids)."""
        plaintext = onnx_path.read_bytes()
        opset, inputs, outputs = onnx_signature(plaintext)
        if signature is not None:
            inputs, outputs = signature
        if self.encrypt:  # the key is checked before anything is written
            self._key()
        assets = assets or {}
        if any(f == MODEL_FILE or "/" in f or f.endswith(".enc") or not f for f in assets):
            raise RegistryError(f"asset names must be plain file names other than {MODEL_FILE} "
                                f"and not ending in .enc, got {sorted(assets)}")
        files = {MODEL_FILE: plaintext} | assets
        digests = {f: sha256_bytes(content) for f, content in files.items()}
        stored_digests: dict[str, str] = {}  # of the files as stored (sealed, when encrypted)
        artifact_path = f"{ARTIFACT_DIR}/{name}/{uuid.uuid4().hex[:16]}"
        with tempfile.TemporaryDirectory() as tmp:
            for filename, content in files.items():
                stored, stored_as = content, filename
                if self.encrypt:
                    stored = crypto.seal(content, self._key(), _context(name, digests[filename]))
                    stored_as = _sealed(filename)
                stored_digests[filename] = sha256_bytes(stored)
                (Path(tmp) / stored_as).write_bytes(stored)
            self.client.log_artifacts(run_id, tmp, artifact_path=artifact_path)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        tags = {
            "sha256": digests[MODEL_FILE],
            "artifact_sha256": stored_digests[MODEL_FILE],
            "encrypted": "true" if self.encrypt else "false",
            "variant": variant,
            "opset": str(opset),
            "signature": json.dumps({"inputs": [s.model_dump() for s in inputs],
                                     "outputs": [s.model_dump() for s in outputs]}),
            "data_fingerprint": data_fingerprint,
            "config_hash": config_digest,
            "source_run": run_id,
            "kind": kind,
        } | {f"{METRIC_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}
        if assets:
            tags["assets"] = json.dumps({f: {"sha256": digests[f],
                                             "artifact_sha256": stored_digests[f]}
                                         for f in assets})
        self._ensure_model(name)
        created = self.client.create_model_version(name, source, run_id=run_id, tags=tags,
                                                   description=description)
        return self.get(name, int(created.version))

    def _ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                name, description=f"maas model {name!r}: one version per pipeline run")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another registration made it first
                raise

    def promote(self, name: str, version: int, alias: str = PRODUCTION) -> int | None:
        """Point ``alias`` at ``version`` after checking its artifact; return the version the
        alias pointed at before (None if it was unset)."""
        if alias not in ALIASES:
            raise RegistryError(f"alias {alias!r} is not one maas serves; use one of {ALIASES}")
        self._verify_all(self.get(name, version))
        previous = self._aliases(name).get(alias)
        self.client.set_registered_model_alias(name, alias, str(version))
        if alias == PRODUCTION:
            history = self._history(name)
            if not history or history[-1] != version:
                self._set_history(name, history + [version])
            if self._aliases(name).get(CANARY) == version:  # the canary graduated
                self.client.delete_registered_model_alias(name, CANARY)
        return previous

    def rollback(self, name: str) -> tuple[int, int]:
        """Move ``production`` back to the version that held it before; (from, to)."""
        current = self._aliases(name).get(PRODUCTION)
        if current is None:
            raise RegistryError(f"model {name!r} has no production version to roll back from; "
                                f"`maas models promote {name} VERSION` sets one")
        known = {v.version for v in self.versions(name)}
        history = [v for v in self._history(name) if v in known]
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise RegistryError(f"model {name!r}: version {current} is the only version that "
                                f"has been in production; there is nothing to roll back to")
        target = history[-1]
        self._verify_all(self.get(name, target))
        self.client.set_registered_model_alias(name, PRODUCTION, str(target))
        self._set_history(name, history)
        return current, target

    def _history(self, name: str) -> list[int]:
        raw = self._registered(name).tags.get(HISTORY_TAG, "[]")
        return [int(v) for v in json.loads(raw)]

    def _set_history(self, name: str, history: list[int]) -> None:
        # Tag values are bounded; the last 100 promotions are plenty to roll back through.
        self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-100:]))

    # ---- reading ------------------------------------------------------------------------

    def _registered(self, name: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            known = [m.name for m in self.models()]
            raise RegistryError(f"no registered model {name!r} in {self.uri}; registered: "
                                f"{known} (run the pipeline to register one)") from None

    def _aliases(self, name: str) -> dict[str, int]:
        return {alias: int(v) for alias, v in self._registered(name).aliases.items()}

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version of ``name`` (one query; replicas poll it)."""
        return self._aliases(name)

    def version_numbers(self, name: str) -> list[int]:
        return sorted(int(mv.version) for mv in
                      self.client.search_model_versions(f"name = '{name}'"))

    def get(self, name: str, ref: int | str | None = None) -> VersionInfo:
        """A version by number, or by alias (``None``: ``production``)."""
        from mlflow.exceptions import MlflowException

        aliases = self._aliases(name)
        if ref is None or isinstance(ref, str) and not is_version_number(ref):
            alias = ref or PRODUCTION
            if alias not in aliases:
                raise RegistryError(
                    f"model {name!r} has no {alias!r} version (aliases: {aliases or 'none'}); "
                    f"`maas models promote {name} VERSION --alias {alias}` sets one")
            ref = aliases[alias]
        if not 1 <= int(ref) <= MAX_VERSION:
            known = [v.version for v in self.versions(name)]
            raise RegistryError(f"model {name!r} has no version {ref}; versions: {known}")
        try:
            mv = self.client.get_model_version(name, str(int(ref)))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            known = [v.version for v in self.versions(name)]
            raise RegistryError(f"model {name!r} has no version {ref}; versions: {known}") from None
        return self._info(mv, aliases)

    def current(self, name: str, alias: str = PRODUCTION) -> VersionInfo | None:
        """The version ``alias`` points at, or None (also when ``name`` is not registered)."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_registered_model(name).aliases.get(alias)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None
        return None if version is None else self.get(name, int(version))

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, oldest first."""
        aliases = self._aliases(name)
        found = self.client.search_model_versions(f"name = '{name}'")
        return sorted((self._info(mv, aliases) for mv in found), key=lambda v: v.version)

    def models(self) -> list[ModelSummary]:
        summaries = []
        for rm in self.client.search_registered_models(order_by=["name ASC"]):
            numbers = self.version_numbers(rm.name)
            summaries.append(ModelSummary(
                name=rm.name, description=rm.description or "",
                aliases={a: int(v) for a, v in rm.aliases.items()}, versions=len(numbers),
                latest_version=max(numbers, default=None),
                updated_at=_millis_iso(rm.last_updated_timestamp)))
        return summaries

    @staticmethod
    def _info(mv: Any, aliases: dict[str, int]) -> VersionInfo:
        tags = mv.tags
        missing = [k for k in ("sha256", "artifact_sha256", "signature") if k not in tags]
        if missing:
            raise RegistryError(f"model {mv.name!r} version {mv.version} lacks the tags "
                                f"{missing}: it was not registered by maas")
        signature = json.loads(tags["signature"])
        return VersionInfo(
            name=mv.name, version=int(mv.version),
            aliases=sorted(a for a, v in aliases.items() if v == int(mv.version)),
            created_at=_millis_iso(mv.creation_timestamp), description=mv.description or "",
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
            assets={f: AssetInfo(**a) for f, a in json.loads(tags.get("assets", "{}")).items()})

    # ---- loading ------------------------------------------------------------------------

    def load(self, info: VersionInfo) -> bytes:
        """The verified ONNX bytes of ``info``, decrypted in memory when stored encrypted."""
        return self._verified_bytes(info, decrypt=True)

    def load_asset(self, info: VersionInfo, filename: str) -> bytes:
        """The verified bytes of the asset ``filename`` registered with ``info``."""
        if filename not in info.assets:
            raise RegistryError(f"model {info.name!r} version {info.version} has no asset "
                                f"{filename!r}; its assets: {sorted(info.assets)}")
        return self._verified_bytes(info, decrypt=True, filename=filename)

    def _verify_all(self, info: VersionInfo) -> None:
        """Check the stored bytes of the model and of every asset (decrypting with the key
        when there is one here): before an alias may point at the version."""
        decrypt = info.encrypted and self._has_key()
        for filename in [MODEL_FILE, *info.assets]:
            self._verified_bytes(info, decrypt=decrypt, filename=filename)

    def _verified_bytes(self, info: VersionInfo, decrypt: bool,
                        filename: str = MODEL_FILE) -> bytes:
        """The bytes of ``filename`` (the model, or one of its assets), checked against the
        hashes recorded for it at registration."""
        if filename == MODEL_FILE:
            sha256, artifact_sha256, what = info.sha256, info.artifact_sha256, "artifact"
        else:
            asset = info.assets[filename]
            sha256, artifact_sha256 = asset.sha256, asset.artifact_sha256
            what = f"asset {filename}"
        stored = self._fetch(info, _sealed(filename) if info.encrypted else filename)
        actual = sha256_bytes(stored)
        if actual != artifact_sha256:
            raise IntegrityError(
                f"model {info.name!r} version {info.version}: the stored {what} has sha256 "
                f"{actual}, but the registry recorded {artifact_sha256} when it was "
                f"registered; it was changed since. Promote another version, or re-run the "
                f"pipeline to register a fresh one")
        if not info.encrypted:
            plaintext = stored
        elif not decrypt:
            return stored
        else:
            try:
                plaintext = crypto.unseal(stored, self._key(), _context(info.name, sha256))
            except crypto.EncryptionError as exc:
                raise RegistryError(f"model {info.name!r} version {info.version}: {exc} "
                                    f"(from {self.key_env}; the artifact itself is intact)"
                                    ) from None
        actual = sha256_bytes(plaintext)
        if actual != sha256:
            raise IntegrityError(
                f"model {info.name!r} version {info.version}: the {what} has sha256 "
                f"{actual}, but the registry recorded {sha256}; refusing to load it")
        return plaintext

    def _fetch(self, info: VersionInfo, filename: str) -> bytes:
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{info.source}/{filename}", dst_path=tmp)
            except (MlflowException, OSError) as exc:
                raise IntegrityError(
                    f"model {info.name!r} version {info.version}: its artifact "
                    f"{info.source}/{filename} cannot be read ({type(exc).__name__}); promote "
                    f"another version or re-run the pipeline") from None
            return Path(local).read_bytes()

    def _key(self) -> bytes:
        try:
            return crypto.key_from_env(self.key_env)
        except crypto.EncryptionError as exc:
            raise RegistryError(str(exc)) from None

    def _has_key(self) -> bool:
        try:
            self._key()
        except RegistryError:
            return False
        return True
