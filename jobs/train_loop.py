"""What every Ray Train worker runs: its shard of the rows, DDP steps, validation, reports
and rank 0's checkpoints.

    python -m jobs.pipeline deploy.yaml    # jobs.train starts the workers with this loop

Workers read their shard of the training rows from Ray's object store (``TrainRows``) and DDP
averages the gradients. Rank 0 writes a checkpoint every ``train.checkpoint_every`` epochs; a
restarted worker group resumes from the latest one.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from maas.config import DistillConfig, ModelConfig, TrainConfig
from maas.data import Splits, TrainRows
from maas.models import build_model, evaluate, loss_fn

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


def _load_shard(rows: TrainRows, device: torch.device, label_dtype: torch.dtype
                ) -> tuple[torch.Tensor, ...]:
    """This worker's rows of the training set (x, y and the teacher's logits when
    distilling) as tensors, kept for every epoch: the rows fit in memory (the driver holds
    them), and each worker copies only its own shard out of the object store."""
    context = ray.train.get_context()
    dtypes = (torch.float32, label_dtype, torch.float32)
    return tuple(torch.tensor(a, dtype=dtype, device=device) for a, dtype in
                 zip(rows.shard(context.get_world_rank(), context.get_world_size()), dtypes))


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
    label_dtype = torch.int64 if inputs.task == "classification" else torch.float32
    shard = _load_shard(ray.get(loop_config["rows"]), device, label_dtype)
    for epoch in range(progress.next_epoch, cfg.epochs):
        metrics = _train_epoch(inputs, ddp_model, optimizer, shard, epoch)
        if scheduler is not None:
            scheduler.step()
        # Every rank holds the same weights after DDP's all-reduce and scores the whole
        # validation set, so every rank takes the same early-stopping decision.
        val = evaluate(model, inputs.x_val, inputs.y_val, inputs.task)
        metrics |= {"val_loss": val["loss"], "restored_from_epoch": progress.restored_from_epoch}
        if inputs.task == "classification":
            metrics["val_accuracy"] = val["accuracy"]
        stop = _should_stop(cfg, progress, metrics)
        metrics["stopped_early"] = float(stop)
        last = stop or epoch == cfg.epochs - 1
        _report(metrics, model, optimizer, scheduler, progress,
                checkpoint=last or (epoch + 1) % cfg.checkpoint_every == 0)
        if stop:
            break


def _train_epoch(inputs: LoopInputs, ddp_model: nn.Module, optimizer: torch.optim.Optimizer,
                 shard: tuple[torch.Tensor, ...], epoch: int) -> dict[str, float]:
    """One pass over this worker's shard; the epoch's training metrics."""
    cfg = inputs.model_cfg.train
    context = ray.train.get_context()
    criterion = loss_fn(inputs.task)
    x_local, y_local, *teacher = shard
    ddp_model.train()
    started, loss_sum, correct, rows = time.perf_counter(), 0.0, 0, 0
    lr = optimizer.param_groups[0]["lr"]
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
        loss_sum += loss.item() * len(labels)  # .item(): a float without the autograd graph
        rows += len(labels)
        if inputs.task == "classification":
            correct += int((out.argmax(dim=-1) == labels).sum())
    elapsed = time.perf_counter() - started
    metrics = {"epoch": epoch, "train_loss": loss_sum / max(rows, 1), "lr": lr,
               "epoch_time_s": elapsed,
               "samples_per_s": rows * context.get_world_size() / max(elapsed, 1e-9)}
    if inputs.task == "classification":
        metrics["train_accuracy"] = correct / max(rows, 1)
    return metrics


def _report(metrics: dict[str, float], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, progress: _Progress, checkpoint: bool) -> None:
    """Report ``metrics``, with rank 0's checkpoint when ``checkpoint`` (every
    ``train.checkpoint_every`` epochs, and the last)."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = None
        if checkpoint and ray.train.get_context().get_world_rank() == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler else None,
                        "epoch": int(metrics["epoch"]), "best": progress.best,
                        "bad_epochs": progress.bad_epochs}, Path(tmp) / CHECKPOINT_FILE)
            (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
            saved = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=saved)
