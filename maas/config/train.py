"""``models[].data``, ``models[].model`` and ``models[].train``: what a model learns from, its
architecture, and how Ray Train trains it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from maas.config.base import StrictModel, positive

DATA_FILE_SUFFIXES = (".npz", ".parquet", ".csv")


class SyntheticConfig(StrictModel):
    """A seeded, learnable classification problem of any size (for benchmarks)."""

    rows: int = Field(20_000, ge=10, le=50_000_000, description="rows to generate")
    features: int = Field(64, ge=1, le=100_000, description="features per row")
    classes: int = Field(10, ge=2, le=10_000, description="classes, one Gaussian cluster each")
    seed: int = Field(0, description="seed of the generator: the same seed, the same rows")


class DataConfig(StrictModel):
    """Where a trained model's rows come from, and how they are split."""

    source: str = Field(
        "sklearn:digits",
        description="sklearn:digits, synthetic, or a .npz (x, y), .parquet or .csv file "
                    "(relative paths from deploy.yaml's folder)")
    label_column: str = Field("label", min_length=1, description="label column of .parquet/.csv")
    num_classes: int | None = Field(
        None, ge=2, description="labels must lie in [0, num_classes); unset: max label + 1")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig,
                                       description="the generator, for source: synthetic")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.9,
                                 description="held-out share, stratified; scored only at the end")
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.9, description="share of the rest used for per-epoch validation")
    seed: int = Field(0, description="seed of the splits: the same seed, the same rows in each")

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        if source in ("sklearn:digits", "synthetic") or source.endswith(DATA_FILE_SUFFIXES):
            return source
        raise ValueError(
            "must be 'sklearn:digits', 'synthetic', or a path ending in .npz, .parquet or .csv")


class ModelArchConfig(StrictModel):
    """The network trained from scratch (inputs are standardised inside it)."""

    kind: Literal["mlp", "cnn"] = Field("mlp", description="mlp: dense layers; cnn: 3x3 convs, "
                                                           "then dense layers")
    hidden: list[int] = Field(
        default_factory=lambda: [128, 64], min_length=1, max_length=16,
        description="widths of the dense layers (the cnn's head too)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout after every hidden layer")
    channels: list[int] = Field(
        default_factory=lambda: [32, 64], min_length=1, max_length=8,
        description="cnn: output channels of each 3x3 conv layer")
    image_shape: list[int] | None = Field(
        None, min_length=3, max_length=3,
        description="cnn: [channels, height, width] of one row; unset: from the data")

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        return positive(widths, "hidden width")

    @field_validator("channels")
    @classmethod
    def _positive_channels(cls, channels: list[int]) -> list[int]:
        return positive(channels, "channel count")

    @field_validator("image_shape")
    @classmethod
    def _positive_shape(cls, shape: list[int] | None) -> list[int] | None:
        return None if shape is None else positive(shape, "image dimension")


class ScheduleConfig(StrictModel):
    """How the learning rate changes over the epochs."""

    kind: Literal["none", "cosine", "step"] = Field(
        "none", description="none: constant; cosine: annealed to 0 over train.epochs; step: "
                            "multiplied by gamma every step_size epochs")
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")


class EarlyStoppingConfig(StrictModel):
    """Stop when the validation metric stops improving; the best epoch is what is served."""

    metric: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss", description="the per-epoch validation metric watched")
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0, description="smaller changes do not count as better")


class TrainConfig(StrictModel):
    """Data-parallel training with Ray Train: workers, optimizer, checkpoints, retries."""

    workers: int = Field(2, ge=1, description="Ray Train data-parallel workers")
    use_gpu: bool = Field(False, description="one GPU per worker, nccl backend")
    # Fractional CPUs: on a 2-core head, 2 workers x 1 CPU would leave nothing for Serve.
    cpus_per_worker: float = Field(0.5, gt=0.0, description="CPUs Ray reserves per worker")
    placement_strategy: Literal["PACK", "SPREAD"] = Field(
        "PACK", description="PACK: workers on as few nodes as fit them (fast collectives); "
                            "SPREAD: on different nodes where possible, so a lost node costs "
                            "one worker, not all of them")
    epochs: int = Field(20, ge=1, le=10_000, description="passes over the training rows")
    batch_size: int = Field(64, ge=1, le=65_536, description="rows per step, per worker")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="torch optimizer")
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 penalty (decoupled for "
                                                                 "adamw)")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig,
                                     description="learning-rate schedule")
    loss: Literal["cross_entropy", "mse"] = Field(
        "cross_entropy", description="cross_entropy: classes; mse: regression")
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="unset: train every epoch and serve the last")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (rank 0)")
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept on storage")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts; -1: unlimited")
    # Ray Train's controller collects reports at this interval and a worker can run only one
    # report ahead of it: Ray's default of 2 s made every shorter epoch last 2 s.
    report_poll_s: float = Field(0.1, gt=0.0, le=10.0,
                                 description="Ray Train controller poll interval (seconds)")
    seed: int = Field(0, description="seed of weights and shuffling: reruns are repeatable")

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
