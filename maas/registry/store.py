"""maas's view of an MLflow Model Registry: versions, aliases, promotion and rollback.

One registered model per ``models[].name``; every pipeline run adds a version, its files
stored and verified by :mod:`maas.registry.artifacts`, what it is recorded in its tags
(:mod:`maas.registry.versions`). ``production`` is what the unversioned URL serves; ``canary``
is a candidate. The registered model's ``maas.production_history`` tag lists every version
that held ``production``, in order, so ``rollback`` knows where to go back to.

MLflow numbers versions inside a database transaction (and retries on conflict), so
concurrent registrations never share a number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maas.config import DeployConfig
from maas.oip import TensorSpec
from maas.registry.artifacts import Artifacts
from maas.registry.versions import (ALIASES, CANARY, HISTORY_TAG, LINEAGE_PREFIX, MAX_VERSION,
                                    METRIC_PREFIX, MODEL_FILE, PRODUCTION, ModelNotFound,
                                    ModelSummary, RegistryError, VersionInfo, VersionNotFound,
                                    millis_iso, no_version, onnx_signature, resolve,
                                    version_info)


class Registry:
    """Versions of every model in the registry at ``uri`` (an explicit MLflow client, no
    global MLflow state)."""

    def __init__(self, uri: str, key_env: str = "MAAS_MODEL_KEY", encrypt: bool = False,
                 tracking_uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        # The tracking side is only used to store a new version's file with its run.
        self.client = MlflowClient(tracking_uri=tracking_uri or uri, registry_uri=uri)
        self.artifacts = Artifacts(self.client, key_env, encrypt, tracking_uri or uri)

    @classmethod
    def from_config(cls, cfg: DeployConfig) -> Registry:
        cfg.state_path.mkdir(parents=True, exist_ok=True)
        return cls(cfg.registry_uri, cfg.registry.key_env, cfg.registry.encrypt,
                   tracking_uri=cfg.tracking_uri)

    def require_key(self) -> None:
        """Fail now, not after training, when encryption is on and the key is unusable."""
        if self.artifacts.encrypt:
            self.artifacts.key()

    # ---- writing ------------------------------------------------------------------------

    def register(self, name: str, onnx_path: Path, *, run_id: str, metrics: dict[str, float],
                 variant: str, data_fingerprint: str, config_digest: str,
                 description: str = "", kind: str = "onnx",
                 signature: tuple[list[TensorSpec], list[TensorSpec]] | None = None,
                 assets: dict[str, bytes] | None = None,
                 lineage: dict[str, str] | None = None) -> VersionInfo:
        """Store ``onnx_path`` (and ``assets``, by file name) with run ``run_id`` and add it as
        the next version of ``name``. ``signature`` (inputs, outputs) is what clients send
        and get, when that is not the graph's own (a text model takes text, not token ids).
        ``lineage``: where the version came from (a fine-tune's base, data and method), kept
        as ``lineage.<key>`` tags."""
        plaintext = onnx_path.read_bytes()
        opset, inputs, outputs = onnx_signature(plaintext)
        if signature is not None:
            inputs, outputs = signature
        self.require_key()  # checked before anything is written
        assets = assets or {}
        if any(f == MODEL_FILE or "/" in f or f.endswith(".enc") or not f for f in assets):
            raise RegistryError(f"asset names must be plain file names other than {MODEL_FILE} "
                                f"and not ending in .enc, got {sorted(assets)}")
        stored = self.artifacts.store(name, run_id, {MODEL_FILE: plaintext} | assets)
        tags = {
            "sha256": stored.sha256[MODEL_FILE],
            "artifact_sha256": stored.artifact_sha256[MODEL_FILE],
            "encrypted": "true" if self.artifacts.encrypt else "false",
            "variant": variant,
            "opset": str(opset),
            "signature": json.dumps({"inputs": [s.model_dump() for s in inputs],
                                     "outputs": [s.model_dump() for s in outputs]}),
            "data_fingerprint": data_fingerprint,
            "config_hash": config_digest,
            "source_run": run_id,
            "kind": kind,
        }
        tags |= {f"{METRIC_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}
        tags |= {f"{LINEAGE_PREFIX}{k}": v for k, v in (lineage or {}).items()}
        if assets:
            tags["assets"] = json.dumps({f: {"sha256": stored.sha256[f],
                                             "artifact_sha256": stored.artifact_sha256[f]}
                                         for f in assets})
        self._ensure_model(name)
        created = self.client.create_model_version(name, stored.source, run_id=run_id,
                                                   tags=tags, description=description)
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
            raise RegistryError(f"alias {alias!r} is not one maas serves; use one of {ALIASES}",
                                status=400)
        self.artifacts.verify_all(self.get(name, version))
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
            raise VersionNotFound(f"model {name!r} has no production version to roll back "
                                  f"from; `maas models promote {name} VERSION` sets one")
        known = {v.version for v in self.versions(name)}
        history = [v for v in self._history(name) if v in known]
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise VersionNotFound(f"model {name!r}: version {current} is the only version that "
                                  f"has been in production; there is nothing to roll back to")
        target = history[-1]
        self.artifacts.verify_all(self.get(name, target))
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

    def _registered(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            known = [m.name for m in self.models()]
            raise ModelNotFound(f"no registered model {name!r} in {self.uri}; registered: "
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
        number = resolve(name, ref, aliases)
        if not 1 <= number <= MAX_VERSION:
            raise self._no_version(name, ref)
        try:
            mv = self.client.get_model_version(name, str(number))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise self._no_version(name, ref) from None
        return version_info(mv, aliases)

    def _no_version(self, name: str, ref: int | str | None) -> VersionNotFound:
        return no_version(name, ref, [v.version for v in self.versions(name)])

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
        return sorted((version_info(mv, aliases) for mv in found), key=lambda v: v.version)

    def models(self) -> list[ModelSummary]:
        summaries = []
        for rm in self.client.search_registered_models(order_by=["name ASC"]):
            numbers = self.version_numbers(rm.name)
            summaries.append(ModelSummary(
                name=rm.name, description=rm.description or "",
                aliases={a: int(v) for a, v in rm.aliases.items()}, versions=len(numbers),
                latest_version=max(numbers, default=None),
                updated_at=millis_iso(rm.last_updated_timestamp)))
        return summaries

    # ---- loading ------------------------------------------------------------------------

    def load(self, info: VersionInfo) -> bytes:
        """The verified ONNX bytes of ``info``, decrypted in memory when stored encrypted."""
        return self.artifacts.read(info)

    def load_asset(self, info: VersionInfo, filename: str) -> bytes:
        """The verified bytes of the asset ``filename`` registered with ``info``."""
        return self.artifacts.read_asset(info, filename)
