"""The model store: versioned ONNX files with a manifest, verified by sha256 on every load.

Layout under ``state_dir``::

    models/<name>/<version>/model.onnx
    models/<name>/<version>/manifest.json   # written last: a version without it is incomplete

The latest version is the highest complete one, derived from the directory rather than kept
in a pointer file that concurrent publishers could race on.

Every write goes to a temporary file first and is renamed into place, so a crash mid-write
never leaves a half-written model or manifest that a replica could load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from maas.oip import ONNX_ELEM_TO_DATATYPE, TensorSpec

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


class IntegrityError(Exception):
    """The bytes on disk are not the bytes that were published."""


class ModelManifest(BaseModel):
    name: str
    version: int
    sha256: str
    created_at: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: dict[str, float]
    data_fingerprint: str
    mlflow_run_id: str | None
    train_checkpoint: str
    variant: str = "fp32"  # which optimize variant this file is


def model_root(state_dir: Path, name: str) -> Path:
    return state_dir / "models" / name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def onnx_signature(path: Path) -> tuple[int, list[TensorSpec], list[TensorSpec]]:
    """(opset, inputs, outputs) read from the ONNX graph; symbolic axes become -1."""
    import onnx

    graph_model = onnx.load(str(path), load_external_data=False)

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


def _versions(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / MANIFEST_FILE).is_file())


def _claim_version(root: Path) -> tuple[int, Path]:
    """Create the next version directory; mkdir is atomic, so two publishers never share one."""
    root.mkdir(parents=True, exist_ok=True)
    candidate = max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0) + 1
    while True:
        target = root / str(candidate)
        try:
            target.mkdir()
            return candidate, target
        except FileExistsError:
            candidate += 1


def publish(state_dir: Path, name: str, onnx_file: Path, metrics: dict[str, float],
            data_fingerprint: str, mlflow_run_id: str | None,
            train_checkpoint: str, variant: str = "fp32") -> ModelManifest:
    """Copy ``onnx_file`` into the store as the next version of ``name``."""
    root = model_root(state_dir, name)
    version, target = _claim_version(root)
    _atomic_write(target / MODEL_FILE, onnx_file.read_bytes())
    opset, inputs, outputs = onnx_signature(target / MODEL_FILE)
    manifest = ModelManifest(
        name=name, version=version, sha256=sha256_file(target / MODEL_FILE),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        opset=opset, inputs=inputs, outputs=outputs, metrics=metrics,
        data_fingerprint=data_fingerprint, mlflow_run_id=mlflow_run_id,
        train_checkpoint=train_checkpoint, variant=variant,
    )
    _atomic_write(target / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
    return manifest


def latest_version(state_dir: Path, name: str) -> int | None:
    """The highest complete version of ``name``, or None when none is published."""
    versions = _versions(model_root(state_dir, name))
    return versions[-1] if versions else None


def list_versions(state_dir: Path, name: str) -> list[int]:
    return _versions(model_root(state_dir, name))


def load_manifest(state_dir: Path, name: str, version: int | None) -> tuple[ModelManifest, Path]:
    """The manifest and verified ONNX path of ``version`` (None: the latest) of ``name``."""
    if version is None:
        version = latest_version(state_dir, name)
        if version is None:
            raise FileNotFoundError(
                f"model {name!r} has no published version under {model_root(state_dir, name)}; "
                f"run `maas run deploy.yaml` first")
    folder = model_root(state_dir, name) / str(version)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        known = list_versions(state_dir, name)
        raise FileNotFoundError(f"model {name!r} has no version {version}; published: {known}")
    manifest = ModelManifest.model_validate_json(manifest_path.read_text())
    onnx_path = folder / MODEL_FILE
    actual = sha256_file(onnx_path)
    if actual != manifest.sha256:
        raise IntegrityError(
            f"model {name!r} version {version}: {onnx_path} has sha256 {actual}, but the "
            f"manifest records {manifest.sha256}; the file was changed after publishing, "
            f"re-run the pipeline to publish a fresh version")
    return manifest, onnx_path

