"""A version's files: stored with the MLflow run that made them, read back verified.

    registered/<name>/<id>/model.onnx      (model.onnx.enc when registry.encrypt is on)
    registered/<name>/<id>/<asset>         (a tokenizer), sealed like the model

Each registration writes to a fresh folder, so none overwrites another's file. Every read
checks the stored bytes' sha256 before anything is decrypted or parsed, then the plaintext's.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from maas import crypto
from maas.registry.versions import (MODEL_FILE, IntegrityError, RegistryError, VersionInfo,
                                    sha256_bytes)

ARTIFACT_DIR = "registered"


def sealed_name(filename: str) -> str:
    """The stored name of an encrypted file (model.onnx -> model.onnx.enc)."""
    return f"{filename}.enc"


def _context(name: str, sha256: str) -> bytes:
    """AES-GCM associated data: an encrypted file opens only as this model's, this content."""
    return f"maas:{name}:{sha256}".encode()


@dataclass(frozen=True)
class Stored:
    """Where a version's files went, and their hashes (content; stored bytes)."""

    source: str
    sha256: dict[str, str]
    artifact_sha256: dict[str, str]


class Artifacts:
    """Writes and verified reads of version files, sealed with the key in ``key_env`` when
    ``encrypt`` is on."""

    def __init__(self, client: Any, key_env: str, encrypt: bool,
                 tracking_uri: str | None = None):
        self.client = client
        self.key_env = key_env
        self.encrypt = encrypt
        # Resolves an ``mlflow-artifacts:`` location (a server's --serve-artifacts) explicitly,
        # not through MLflow's process-wide tracking URI.
        self.tracking_uri = tracking_uri

    def key(self) -> bytes:
        try:
            return crypto.key_from_env(self.key_env)
        except crypto.EncryptionError as exc:
            raise RegistryError(str(exc)) from None

    def has_key(self) -> bool:
        try:
            self.key()
        except RegistryError:
            return False
        return True

    def store(self, name: str, run_id: str, files: dict[str, bytes]) -> Stored:
        """Write ``files`` (name -> content) with run ``run_id``, sealed when encrypting."""
        digests = {f: sha256_bytes(content) for f, content in files.items()}
        stored_digests: dict[str, str] = {}
        artifact_path = f"{ARTIFACT_DIR}/{name}/{uuid.uuid4().hex[:16]}"
        with tempfile.TemporaryDirectory() as tmp:
            for filename, content in files.items():
                stored, stored_as = content, filename
                if self.encrypt:
                    stored = crypto.seal(content, self.key(), _context(name, digests[filename]))
                    stored_as = sealed_name(filename)
                stored_digests[filename] = sha256_bytes(stored)
                (Path(tmp) / stored_as).write_bytes(stored)
            self.client.log_artifacts(run_id, tmp, artifact_path=artifact_path)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        return Stored(source, digests, stored_digests)

    def verify_all(self, info: VersionInfo) -> None:
        """Check the stored bytes of the model and of every asset (decrypting with the key
        when there is one here): before an alias may point at the version."""
        decrypt = info.encrypted and self.has_key()
        for filename in [MODEL_FILE, *info.assets]:
            self.read(info, filename, decrypt=decrypt)

    def read_asset(self, info: VersionInfo, filename: str) -> bytes:
        """The verified bytes of the asset ``filename`` registered with ``info``."""
        if filename not in info.assets:
            raise RegistryError(f"model {info.name!r} version {info.version} has no asset "
                                f"{filename!r}; its assets: {sorted(info.assets)}")
        return self.read(info, filename)

    def read(self, info: VersionInfo, filename: str = MODEL_FILE, decrypt: bool = True) -> bytes:
        """The bytes of ``filename`` (the model, or one of its assets), checked against the
        hashes recorded for it at registration; decrypted in memory unless ``decrypt`` is
        False (then the sealed bytes, verified)."""
        if filename == MODEL_FILE:
            sha256, artifact_sha256, what = info.sha256, info.artifact_sha256, "artifact"
        else:
            asset = info.assets[filename]
            sha256, artifact_sha256 = asset.sha256, asset.artifact_sha256
            what = f"asset {filename}"
        stored = self._fetch(info, sealed_name(filename) if info.encrypted else filename)
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
                plaintext = crypto.unseal(stored, self.key(), _context(info.name, sha256))
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
        location = f"{info.source}/{filename}"
        local = local_path(location)
        try:
            if local is not None:  # the default store: read in place, no copy, no MLflow
                return local.read_bytes()
            return _download(location, self.tracking_uri)
        except OSError as exc:
            raise IntegrityError(
                f"model {info.name!r} version {info.version}: its artifact {location} cannot "
                f"be read ({type(exc).__name__}); promote another version or re-run the "
                f"pipeline") from None


def _download(location: str, tracking_uri: str | None) -> bytes:
    """A file from a remote artifact store, through MLflow (its failures as OSError)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp,
                                                        tracking_uri=tracking_uri)
        except MlflowException as exc:
            raise OSError(str(exc)) from exc
        return Path(local).read_bytes()


def local_path(uri: str) -> Path | None:
    """The file a ``file:`` URI or plain path names; None for any other scheme (a scheme has
    two or more characters: ``C:`` is a Windows drive)."""
    if uri.startswith("file:"):
        return Path(url2pathname(urlparse(uri).path))
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", uri):
        return None
    return Path(uri)
