"""What every ``deploy.yaml`` section shares: the strict base model, name patterns and paths."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

# Model names appear in URLs (/v2/models/<name>/infer), Serve app names and file paths.
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# Tenant names appear in usage reports, Prometheus tags and payload log records.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def positive(values: list[int], what: str) -> list[int]:
    """``values`` when every one is >= 1; a ValueError naming ``what`` otherwise."""
    if any(v < 1 for v in values):
        raise ValueError(f"every {what} must be >= 1")
    return values


def config_relative(ref: str, base_dir: Path) -> Path:
    """A file named in deploy.yaml: ``~`` expanded, a relative path taken from ``base_dir``
    (deploy.yaml's folder)."""
    path = Path(ref).expanduser()
    return path if path.is_absolute() else base_dir / path


def expand_state_dir(state_dir: str) -> Path:
    """``state_dir`` with ``~`` expanded, resolved on the machine that calls this."""
    return Path(os.path.expanduser(state_dir)).resolve()


def sqlite_uri(state_path: Path) -> str:
    """The default MLflow tracking and registry database under ``state_path``."""
    return f"sqlite:///{state_path / 'mlflow.db'}"


def access_store_uri(store: str | None, state_dir: str) -> str:
    """The access store's SQLAlchemy URL: ``store``, or SQLite under ``state_dir``."""
    return store or f"sqlite:///{expand_state_dir(state_dir) / 'access.db'}"
