"""Data-parallel PyTorch training with Ray Train, run from the pipeline driver.

    python -m jobs.pipeline deploy.yaml      # calls run_training() for each model

Each worker loads the same seeded split (see maas.data), takes its shard through a
DistributedSampler (``prepare_data_loader``), and DDP averages gradients. Rank 0 writes a
checkpoint every epoch; a restarted worker group resumes from the latest one.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ray.train
import ray.train.torch
from maas.config import ModelConfig
from maas.data import load_splits
from maas.models import accuracy, build_model

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"


@dataclass(frozen=True)
class TrainOutcome:
    """What the driver gets back: the trained weights and the last reported metrics."""

    model: nn.Module
    metrics: dict[str, Any]
    checkpoint_path: str
    run_path: str


def _load_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore from Ray Train's latest checkpoint, if any; return the next epoch to run."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as ckpt_dir:
        state = torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location="cpu")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]) + 1


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    model_cfg: ModelConfig = loop_config["model_cfg"]
    train_cfg = model_cfg.train
    torch.manual_seed(train_cfg.seed)

    splits = load_splits(model_cfg.data)
    model = build_model(model_cfg.model, splits.x_train, splits.n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    start_epoch = _load_checkpoint(model, optimizer)

    ddp_model = ray.train.torch.prepare_model(model)
    loader = ray.train.torch.prepare_data_loader(
        DataLoader(
            TensorDataset(torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)),
            batch_size=train_cfg.batch_size,
            shuffle=True,
        )
    )
    loss_fn = nn.CrossEntropyLoss()
    context = ray.train.get_context()

    for epoch in range(start_epoch, train_cfg.epochs):
        if context.get_world_size() > 1:
            loader.sampler.set_epoch(epoch)
        ddp_model.train()
        started, loss_sum, rows = time.perf_counter(), 0.0, 0
        for features, labels in loader:
            optimizer.zero_grad()
            loss = loss_fn(ddp_model(features), labels)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss) * len(labels)
            rows += len(labels)
        elapsed = time.perf_counter() - started

        # Every rank holds identical weights after the all-reduce, so each can score the
        # full held-out set; only rank 0's metrics are kept by Ray Train.
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(rows, 1),
            "val_accuracy": accuracy(model, splits.x_test, splits.y_test),
            "samples_per_s": rows * context.get_world_size() / max(elapsed, 1e-9),
        }
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if context.get_world_rank() == 0:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "epoch": epoch}
                torch.save(state, Path(tmp) / CHECKPOINT_FILE)
                (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


class EpochProgress(ray.train.UserCallback):
    """Prints one line per epoch and logs the metrics to the MLflow run of this pipeline.

    Runs in the Ray Train controller actor, whose output Ray streams to the driver.
    """

    def __init__(self, model_name: str, epochs: int, tracking_uri: str, mlflow_run_id: str):
        self.model_name = model_name
        self.epochs = epochs
        self.tracking_uri = tracking_uri
        self.mlflow_run_id = mlflow_run_id
        self._client = None  # created in the controller process, on the first report

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        from mlflow.tracking import MlflowClient

        rank0 = metrics[0]
        epoch = int(rank0["epoch"])
        print(
            f"[train {self.model_name}] epoch {epoch + 1}/{self.epochs} "
            f"loss {rank0['train_loss']:.4f} val_accuracy {rank0['val_accuracy']:.4f} "
            f"{rank0['samples_per_s']:.0f} samples/s",
            flush=True,
        )
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        for key in ("train_loss", "val_accuracy", "samples_per_s"):
            self._client.log_metric(self.mlflow_run_id, key, float(rank0[key]), step=epoch)


def run_training(model_cfg: ModelConfig, storage_path: Path, run_name: str,
                 callbacks: list[ray.train.UserCallback]) -> TrainOutcome:
    """Train ``model_cfg`` on the connected Ray cluster and return the final weights."""
    train_cfg = model_cfg.train
    resources = {"CPU": train_cfg.cpus_per_worker}
    if train_cfg.use_gpu:
        resources["GPU"] = 1
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"model_cfg": model_cfg},
        scaling_config=ray.train.ScalingConfig(
            num_workers=train_cfg.workers,
            use_gpu=train_cfg.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=2),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training {model_cfg.name!r} finished without a checkpoint "
                           f"(see the Ray Train logs under {result.path})")

    splits = load_splits(model_cfg.data)
    model = build_model(model_cfg.model, splits.x_train, splits.n_classes)
    with result.checkpoint.as_directory() as ckpt_dir:
        state = torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location="cpu")
    model.load_state_dict(state["model"])
    model.eval()
    return TrainOutcome(model=model, metrics=dict(result.metrics),
                        checkpoint_path=result.checkpoint.path, run_path=result.path)
