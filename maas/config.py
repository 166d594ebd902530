"""The typed schema of ``deploy.yaml``, loaded once and passed down to every stage.

    maas validate deploy.yaml

Every section is a pydantic model with ``extra="forbid"``: an unknown key is an error, never
silently ignored. :func:`load_config` reports *all* problems at once, each naming its key path,
the value seen and what is allowed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Model names appear in URLs (/v2/models/<name>/infer), Serve app names and file paths.
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterConfig(StrictModel):
    """Where Ray runs. ``RAY_ADDRESS`` in the environment wins over ``address``."""

    address: str | None = Field(
        None, description="Ray cluster to join, e.g. 10.0.0.5:6379; unset: a local head"
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local head (maas up / embedded); unset: all cores"
    )
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the local head; unset: detected")
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(8265, ge=1, le=65535)
    metrics_port: int = Field(8090, ge=1, le=65535, description="Prometheus metrics export port")
    http_host: str = Field("127.0.0.1", description="Ray Serve HTTP proxy bind address")
    http_port: int = Field(8000, ge=1, le=65535)


class TrackingConfig(StrictModel):
    """MLflow tracking. The default is a SQLite file under ``state_dir``."""

    uri: str | None = Field(None, description="MLflow tracking URI; unset: sqlite under state_dir")
    experiment: str = Field("maas", min_length=1)


class DataConfig(StrictModel):
    source: Literal["sklearn:digits"] = "sklearn:digits"
    test_fraction: float = Field(0.2, gt=0.0, lt=0.9, description="held-out share, stratified")
    seed: int = 0


class ModelArchConfig(StrictModel):
    kind: Literal["mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1, max_length=16)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        if any(w < 1 for w in widths):
            raise ValueError("every hidden width must be >= 1")
        return widths


class TrainConfig(StrictModel):
    workers: int = Field(2, ge=1, description="Ray Train data-parallel workers")
    use_gpu: bool = False
    # Fractional CPUs: on a 2-core head, 2 workers x 1 CPU would leave nothing for Serve.
    cpus_per_worker: float = Field(0.5, gt=0.0)
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    seed: int = 0


class ExportConfig(StrictModel):
    # The torch.export-based ONNX exporter emits opset 18 natively.
    opset: int = Field(18, ge=18, le=21)
    parity_atol: float = Field(
        1e-4, gt=0.0, description="max abs diff allowed between torch and ONNX Runtime outputs"
    )


class ServeConfig(StrictModel):
    num_replicas: int = Field(1, ge=1, le=64)
    cpus_per_replica: float = Field(0.25, gt=0.0)
    ort_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads")
    max_rows: int = Field(1024, ge=1, description="rows allowed in one infer request")


class ModelConfig(StrictModel):
    name: str

    @field_validator("name")
    @classmethod
    def _url_safe_name(cls, name: str) -> str:
        if not re.fullmatch(MODEL_NAME_PATTERN, name):
            raise ValueError(
                "must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or "
                "digit (it becomes part of the URL /v2/models/<name>/infer)"
            )
        return name
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelArchConfig = Field(default_factory=ModelArchConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


class DeployConfig(StrictModel):
    """The whole of ``deploy.yaml``."""

    state_dir: str = Field("~/.maas", min_length=1, description="models, runs, MLflow database")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    models: list[ModelConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> DeployConfig:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"models: name {model.name!r} appears twice; names must be unique")
            seen.add(model.name)
        return self

    @property
    def state_path(self) -> Path:
        """``state_dir`` with ``~`` expanded, resolved on the machine that reads it."""
        return Path(os.path.expanduser(self.state_dir)).resolve()

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.state_path / 'mlflow.db'}"

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.name == name:
                return model
        known = ", ".join(m.name for m in self.models)
        raise KeyError(f"no model named {name!r} in the config; known models: {known}")


class ConfigError(Exception):
    """Raised with every problem found in a config file, one line each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))


def _format_loc(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the key at ``loc`` (for listing allowed keys)."""
    cls: Any = DeployConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        cls = args[0] if args and isinstance(args[0], type) else ann
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
    return cls


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    where = _format_loc(loc)
    if error["type"] == "extra_forbidden":
        section = _section_at(loc)
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"{where}: unknown key; allowed keys here: {allowed}"
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return f"{where}: {message}, got {error.get('input')!r}"


def parse_config(data: Any, source: str = "<config>") -> DeployConfig:
    """Validate an already-parsed YAML document; raise :class:`ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): expected a mapping of sections, got {data!r}"])
    try:
        return DeployConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None


def load_config(path: str | os.PathLike[str]) -> DeployConfig:
    """Read and validate a ``deploy.yaml``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"not valid YAML{at}: {problem}"]) from None
    return parse_config(data, str(path))
