"""Data-parallel PyTorch training with Ray Train, started from the pipeline driver.

    python -m jobs.pipeline deploy.yaml [--run-name NAME]    # calls run_training() per model

The driver loads and checks the data once (maas.data) and starts ``train.workers`` workers
running :func:`jobs.train_loop.train_loop_per_worker`. A restarted worker group
(``max_failures``) and a re-run with the same run name both resume from the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from jobs.train_loop import CHECKPOINT_FILE, LoopInputs, train_loop_per_worker
from maas.config import DistillConfig, ModelConfig, TrainConfig
from maas.data import Splits, TrainRows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutcome:
    """What the driver gets back: the chosen weights and the metrics of the final report."""

    model: nn.Module
    metrics: dict[str, Any]
    checkpoint_path: str
    run_path: str


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
    cfg = model_cfg.train
    # Read by the driver and propagated by Ray Train to the controller it starts.
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(cfg.report_poll_s)
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    inputs = LoopInputs.from_splits(model_cfg, splits, distill if teacher is not None else None)
    inputs.build()  # a data shape the model cannot take fails here, before any worker starts
    soft_targets = None
    if inputs.distill is not None:
        with torch.no_grad():  # computed once on the driver: workers never load the teacher
            soft_targets = teacher.eval()(torch.from_numpy(splits.x_train)).numpy()
    # The rows go through Ray's object store, not a Ray Dataset: they are in the driver's
    # memory already, and a Dataset costs every run a SplitCoordinator actor and a streaming
    # executor (a 5-epoch digits MLP run on 2 cores: 37-44 s with one, 25-34 s without).
    rows = ray.put(TrainRows(splits.x_train, splits.y_train, soft_targets))
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"inputs": inputs, "rows": rows,
                           "resume_from": _recover_torn_snapshot(storage_path / run_name)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=cfg.placement_strategy),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            checkpoint_config=_checkpoint_config(cfg),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    checkpoint = _served_checkpoint(result, cfg)
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


def _served_checkpoint(result: Any, cfg: TrainConfig) -> ray.train.Checkpoint | None:
    """The last checkpoint; with early stopping, the best epoch's, not the last (patience)
    epoch's."""
    stopping = cfg.early_stopping
    if stopping is None or not result.best_checkpoints:
        return result.checkpoint
    sign = -1.0 if stopping.metric == "val_loss" else 1.0
    return max(result.best_checkpoints,
               key=lambda pair: sign * pair[1].get(stopping.metric, -math.inf))[0]


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
