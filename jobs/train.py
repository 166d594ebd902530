"""Data-parallel PyTorch training with Ray Train, run from the pipeline driver.

    python -m jobs.pipeline deploy.yaml [--run-name NAME]    # calls run_training() per model

The driver loads and checks the data once (maas.data); workers stream their shard of the
training rows from Ray Data (``get_dataset_shard``) and DDP averages the gradients. Rank 0 writes
a checkpoint every ``train.checkpoint_every`` epochs. A restarted worker group (``max_failures``)
and a re-run with the same run name both resume from the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import ray.train
import ray.train.torch
from maas.config import DistillConfig, ModelConfig, TrainConfig
from maas.data import Splits, to_ray_dataset
from maas.models import build_model, evaluate, loss_fn

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"


@dataclass(frozen=True)
class LoopInputs:
    """Everything a worker needs besides its data shard, sent once with the loop config."""

    model_cfg: ModelConfig
    task: str
    n_features: int
    n_outputs: int
    image_shape: tuple[int, int, int] | None
    mean: np.ndarray
    std: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    distill: DistillConfig | None = None  # set: the rows carry teacher logits ("t")

    @classmethod
    def from_splits(cls, model_cfg: ModelConfig, splits: Splits,
                    distill: DistillConfig | None = None) -> LoopInputs:
        return cls(model_cfg=model_cfg, task=splits.task, n_features=splits.n_features,
                   n_outputs=splits.n_outputs, image_shape=splits.image_shape,
                   mean=splits.x_train.mean(axis=0), std=splits.x_train.std(axis=0),
                   x_val=splits.x_val, y_val=splits.y_val, distill=distill)

    def build(self) -> nn.Module:
        return build_model(self.model_cfg.model, self.n_features, self.n_outputs, self.mean,
                           self.std, self.image_shape)


@dataclass(frozen=True)
class TrainOutcome:
    """What the driver gets back: the chosen weights and the metrics of the final report."""

    model: nn.Module
    metrics: dict[str, Any]
    checkpoint_path: str
    run_path: str


def make_optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    if cfg.schedule.kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule.kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.schedule.step_size,
                                               gamma=cfg.schedule.gamma)
    return None


@dataclass
class _Progress:
    """Training state that survives restarts: saved in every checkpoint."""

    next_epoch: int = 0
    restored_from_epoch: int = -1
    best: float = math.nan
    bad_epochs: int = 0


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             fallback: ray.train.Checkpoint | None) -> _Progress:
    """Load Ray Train's latest checkpoint of this run, else ``fallback`` (see
    :func:`_recover_torn_snapshot`), else start fresh."""
    checkpoint = ray.train.get_checkpoint() or fallback
    if checkpoint is None:
        return _Progress()
    with checkpoint.as_directory() as ckpt_dir:
        state = torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location="cpu",
                           weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    return _Progress(next_epoch=state["epoch"] + 1, restored_from_epoch=state["epoch"],
                     best=state["best"], bad_epochs=state["bad_epochs"])


def _should_stop(cfg: TrainConfig, progress: _Progress, metrics: dict[str, float]) -> bool:
    """Update the early-stopping counters; True when training should stop now."""
    stopping = cfg.early_stopping
    if stopping is None:
        return False
    value = metrics[stopping.metric]
    sign = -1.0 if stopping.metric == "val_loss" else 1.0  # loss: lower is better
    if math.isnan(progress.best) or sign * (value - progress.best) > stopping.min_delta:
        progress.best, progress.bad_epochs = value, 0
    else:
        progress.bad_epochs += 1
    return progress.bad_epochs >= stopping.patience


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      cfg: DistillConfig) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy with the labels
    (Hinton et al., 2015; T^2 keeps the soft term's gradients on the labels' scale)."""
    soft = nn.functional.kl_div(nn.functional.log_softmax(student / cfg.temperature, dim=-1),
                                nn.functional.log_softmax(teacher / cfg.temperature, dim=-1),
                                log_target=True, reduction="batchmean")
    hard = nn.functional.cross_entropy(student, labels)
    return cfg.alpha * cfg.temperature ** 2 * soft + (1.0 - cfg.alpha) * hard


def _load_shard(device: torch.device, label_dtype: torch.dtype,
                with_teacher: bool) -> tuple[torch.Tensor, ...]:
    """This worker's rows of the training set, read once from its Ray Data shard.

    Ray Data splits the rows evenly across workers (equal=True), so every rank runs the same
    number of steps, as DDP requires. The shard is read once and kept as tensors, so later
    epochs do not re-run the split and the Arrow-to-torch conversion; this holds the shard in
    the worker's memory, which suits data sets that fit in RAM across the workers.
    """
    dtypes = {"x": torch.float32, "y": label_dtype} | ({"t": torch.float32} if with_teacher else {})
    parts = list(ray.train.get_dataset_shard("train").iter_torch_batches(
        batch_size=65_536, dtypes=dtypes, device="cpu"))
    return tuple(torch.cat([p[column] for p in parts]).to(device) for column in dtypes)


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                     seed: tuple[int, int, int], *extra: torch.Tensor) -> Any:
    """Shuffled mini-batches of (x, y, *extra), in an order fixed by (seed, epoch, rank)."""
    generator = torch.Generator().manual_seed(hash(seed) & 0x7FFF_FFFF)
    order = torch.randperm(len(x), generator=generator).to(x.device)
    for start in range(0, len(x), batch_size):
        index = order[start:start + batch_size]
        yield (x[index], y[index], *(t[index] for t in extra))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    inputs: LoopInputs = loop_config["inputs"]
    cfg = inputs.model_cfg.train
    torch.manual_seed(cfg.seed)
    model = inputs.build()
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    progress = _restore(model, optimizer, scheduler, loop_config.get("resume_from"))
    ddp_model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    criterion = loss_fn(inputs.task)
    label_dtype = torch.int64 if inputs.task == "classification" else torch.float32
    context = ray.train.get_context()
    x_local, y_local, *teacher = _load_shard(device, label_dtype, inputs.distill is not None)

    for epoch in range(progress.next_epoch, cfg.epochs):
        ddp_model.train()
        started, loss_sum, correct, rows = time.perf_counter(), 0.0, 0, 0
        for features, labels, *soft in shuffled_batches(
                x_local, y_local, cfg.batch_size, (cfg.seed, epoch, context.get_world_rank()),
                *teacher):
            optimizer.zero_grad()
            out = ddp_model(features)
            if inputs.distill is not None:
                loss = distillation_loss(out, soft[0], labels, inputs.distill)
            else:
                loss = criterion(out if inputs.task == "classification"
                               else out.reshape(labels.shape), labels)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss) * len(labels)
            rows += len(labels)
            if inputs.task == "classification":
                correct += int((out.argmax(dim=-1) == labels).sum())
        elapsed = time.perf_counter() - started
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()

        # Every rank holds the same weights after DDP's all-reduce and scores the whole
        # validation set, so every rank takes the same early-stopping decision.
        val = evaluate(model, inputs.x_val, inputs.y_val, inputs.task)
        metrics: dict[str, float] = {
            "epoch": epoch, "train_loss": loss_sum / max(rows, 1), "val_loss": val["loss"],
            "lr": lr, "epoch_time_s": elapsed,
            "samples_per_s": rows * context.get_world_size() / max(elapsed, 1e-9),
            "restored_from_epoch": progress.restored_from_epoch,
        }
        if inputs.task == "classification":
            metrics["train_accuracy"] = correct / max(rows, 1)
            metrics["val_accuracy"] = val["accuracy"]
        stop = _should_stop(cfg, progress, metrics)
        metrics["stopped_early"] = float(stop)
        last = stop or epoch == cfg.epochs - 1
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if context.get_world_rank() == 0 and (last or (epoch + 1) % cfg.checkpoint_every == 0):
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler else None,
                            "epoch": epoch, "best": progress.best,
                            "bad_epochs": progress.bad_epochs}, Path(tmp) / CHECKPOINT_FILE)
                (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if stop:
            break


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
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        rank0 = metrics[0]
        epoch = int(rank0["epoch"])
        shown = " ".join(f"{k} {rank0[k]:.4f}" for k in ("train_loss", "val_loss", "val_accuracy")
                         if k in rank0)
        resumed = (f" (resumed from epoch {int(rank0['restored_from_epoch']) + 1})"
                   if rank0["restored_from_epoch"] >= 0 else "")
        print(f"[train {self.model_name}] epoch {epoch + 1}/{self.epochs} {shown} "
              f"{rank0['samples_per_s']:.0f} samples/s{resumed}", flush=True)
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        now = int(time.time() * 1000)
        self._client.log_batch(self.mlflow_run_id, metrics=[
            Metric(key, float(value), now, epoch) for key, value in rank0.items()
            if key != "epoch"])


def _checkpoint_config(cfg: TrainConfig) -> ray.train.CheckpointConfig:
    if cfg.early_stopping is None:
        return ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep)
    # Rank the kept checkpoints by the early-stopping metric, so the best one survives.
    order = "min" if cfg.early_stopping.metric == "val_loss" else "max"
    return ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep,
                                      checkpoint_score_attribute=cfg.early_stopping.metric,
                                      checkpoint_score_order=order)


def _recover_torn_snapshot(run_dir: Path) -> ray.train.Checkpoint | None:
    """The newest checkpoint of ``run_dir`` when Ray's run snapshot there is unreadable.

    Ray Train rewrites ``checkpoint_manager_snapshot.json`` in place; a driver killed during
    that write leaves it empty or cut short, and Ray then refuses to start the run at all.
    The checkpoints themselves are intact (each is written before it is recorded), so the
    torn snapshot is set aside and the run resumes from the newest complete checkpoint.
    """
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        json.loads(snapshot.read_text())
        return None  # readable (or absent, below): Ray restores the run itself
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        pass
    complete = [d for d in run_dir.glob("checkpoint_*")
                if (d / CHECKPOINT_FILE).is_file() and (d / "metrics.json").is_file()]
    snapshot.rename(snapshot.with_name(snapshot.name + ".torn"))
    if not complete:
        log.warning("%s was torn and no complete checkpoint exists: starting over", snapshot)
        return None
    newest = max(complete, key=lambda d: json.loads((d / "metrics.json").read_text())["epoch"])
    log.warning("%s was torn (a driver died while Ray wrote it); resuming from %s",
                snapshot, newest)
    return ray.train.Checkpoint.from_directory(str(newest))


def run_training(model_cfg: ModelConfig, splits: Splits, storage_path: Path, run_name: str,
                 callbacks: list[ray.train.UserCallback],
                 teacher: nn.Module | None = None,
                 distill: DistillConfig | None = None) -> TrainOutcome:
    """Train ``model_cfg`` on the connected cluster. The same ``run_name`` and ``storage_path``
    as an interrupted run resume it from its latest checkpoint. With ``teacher`` and
    ``distill``, the model learns from the teacher's logits as well as the labels."""
    import ray.data

    cfg = model_cfg.train
    # Read by the driver and propagated by Ray Train to the controller it starts.
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(cfg.report_poll_s)
    # Progress bars from every worker's Ray Data iterator drown the per-epoch lines.
    ray.data.DataContext.get_current().enable_progress_bars = False
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    stopping = cfg.early_stopping
    inputs = LoopInputs.from_splits(model_cfg, splits, distill if teacher is not None else None)
    inputs.build()  # a data shape the model cannot take fails here, before any worker starts
    soft_targets = None
    if inputs.distill is not None:
        with torch.no_grad():  # computed once on the driver: workers never load the teacher
            soft_targets = teacher.eval()(torch.from_numpy(splits.x_train)).numpy()
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"inputs": inputs,
                           "resume_from": _recover_torn_snapshot(storage_path / run_name)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=cfg.placement_strategy),
        datasets={"train": to_ray_dataset(splits.x_train, splits.y_train, soft_targets)},
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            checkpoint_config=_checkpoint_config(cfg),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    checkpoint = result.checkpoint
    if stopping is not None and result.best_checkpoints:
        # With early stopping, serve the best epoch seen, not the last (patience) epoch.
        sign = -1.0 if stopping.metric == "val_loss" else 1.0
        checkpoint = max(result.best_checkpoints,
                         key=lambda pair: sign * pair[1].get(stopping.metric, -math.inf))[0]
    if checkpoint is None:
        raise RuntimeError(f"training {model_cfg.name!r} finished without a checkpoint "
                           f"(see the Ray Train logs under {result.path})")
    model = inputs.build()
    with checkpoint.as_directory() as ckpt_dir:
        state = torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location="cpu",
                           weights_only=False)
    model.load_state_dict(state["model"])
    model.eval()
    return TrainOutcome(model=model, metrics=dict(result.metrics),
                        checkpoint_path=checkpoint.path, run_path=result.path)


def train_student(model_cfg: ModelConfig, splits: Splits, teacher: nn.Module,
                  storage_path: Path, run_name: str) -> nn.Module:
    """The ``distill`` variant: an MLP of ``optimize.distill.hidden`` trained as a Ray Train
    job, like the teacher, on the teacher's softened logits plus the labels."""
    distill = model_cfg.optimize.distill
    student_cfg = model_cfg.model_copy(update={
        "name": f"{model_cfg.name}-student",
        "model": model_cfg.model.model_copy(update={"kind": "mlp", "hidden": distill.hidden}),
        "train": model_cfg.train.model_copy(update={
            "epochs": distill.epochs, "lr": distill.lr, "early_stopping": None,
            "checkpoint_every": distill.epochs}),
    })
    return run_training(student_cfg, splits, storage_path, run_name, [], teacher=teacher,
                        distill=distill).model
