"""Training progress: logged per epoch from the Ray Train controller, shown on the driver.

:class:`EpochProgress` runs in the controller actor and writes every epoch's metrics to the
model's MLflow run. :class:`TrainingBar` runs on the driver and draws a progress bar from those
same metrics, so the bar needs no extra actor or channel, and shows what MLflow records.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray.train
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from maas.report import wide

log = logging.getLogger(__name__)
SHOWN = ("train_loss", "val_loss", "val_accuracy")


class EpochProgress(ray.train.UserCallback):
    """Logs every epoch's metrics (rank 0's) to the MLflow run of this pipeline, and prints a
    line to the controller's log (the Ray dashboard shows it; ``--verbose`` streams it)."""

    def __init__(self, model_name: str, epochs: int, tracking_uri: str, mlflow_run_id: str,
                 unit: str = "epoch", rate: str = "samples_per_s"):
        self.model_name = model_name
        self.epochs = epochs  # how many ``unit``s the run has
        self.tracking_uri = tracking_uri
        self.mlflow_run_id = mlflow_run_id
        self.unit = unit  # the metric counting reports: "epoch", or "step" for a fine-tune
        self.rate = rate  # the throughput metric shown: samples/s, or tokens/s
        self._client = None  # created in the controller process, on the first report

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        rank0 = metrics[0]
        epoch = int(rank0[self.unit])
        shown = " ".join(f"{k} {rank0[k]:.4f}" for k in SHOWN if k in rank0)
        restored = int(rank0[f"restored_from_{self.unit}"])
        resumed = f" (resumed from {self.unit} {restored + 1})" if restored >= 0 else ""
        rate = self.rate.removesuffix("_per_s")
        print(f"[train {self.model_name}] {self.unit} {epoch + 1}/{self.epochs} {shown} "
              f"{rank0[self.rate]:.0f} {rate}/s{resumed}", flush=True)
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        now = int(time.time() * 1000)
        self._client.log_batch(self.mlflow_run_id, metrics=[
            Metric(key, float(value), now, epoch) for key, value in rank0.items()
            if key != self.unit])


class TrainingBar:
    """A progress bar of one training run: epochs done, the latest losses and accuracy, and
    samples/s, polled from the run's MLflow metrics every POLL_S seconds."""

    POLL_S = 0.5

    def __init__(self, console: Console, tracking_uri: str, run_id: str, label: str,
                 epochs: int, unit: str = "epochs", rate: str = "samples_per_s",
                 stage: str = "[1/4]", verb: str = "train"):
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._run_id = run_id
        title = f"  [bold cyan]{stage}[/] {verb} {{task.description}}"
        self._progress = Progress(TextColumn(title),
                                  BarColumn(bar_width=24), MofNCompleteColumn(),
                                  TextColumn(f"{unit} {{task.fields[shown]}}"),
                                  TimeElapsedColumn(), console=wide(console),
                                  # stdout and stderr stay where jobs.terminal put them
                                  redirect_stdout=False, redirect_stderr=False)
        self._task = self._progress.add_task(label, total=epochs, shown="")
        self._rate = rate
        self._stop = threading.Event()
        self._warned = False
        self._poller = threading.Thread(target=self._poll, name="maas-training-bar", daemon=True)

    def __enter__(self) -> TrainingBar:
        self._progress.start()
        self._poller.start()
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        self._stop.set()
        # A tracking server that stopped answering must not hold up the run's end (or Ctrl-C).
        self._poller.join(timeout=2 * self.POLL_S)
        if kind is None and not self._poller.is_alive():
            self._update()  # the last epochs, reported after the last poll
        self._progress.stop()

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL_S):
            self._update()

    def _update(self) -> None:
        try:
            latest = self._client.get_run(self._run_id).data.metrics
            history = self._client.get_metric_history(self._run_id, "train_loss")
        except Exception as exc:  # noqa: BLE001 - the tracking store is busy: the next poll
            if not self._warned:
                self._warned = True
                log.warning("training progress not read from MLflow (%s); retrying", exc)
            return
        if not history:
            return
        shown = [f"{k} {latest[k]:.4f}" for k in SHOWN if k in latest]
        if self._rate in latest:
            shown.append(f"{latest[self._rate]:.0f} {self._rate.removesuffix('_per_s')}/s")
        self._progress.update(self._task, completed=max(m.step for m in history) + 1,
                              shown=" · ".join(shown))
