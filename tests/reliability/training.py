"""A Ray Train run with a fault in the middle, for the training fault tests: where its
checkpoints stand, how long it took to go on after the fault, and its figures."""

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from maas.config import ModelConfig, parse_config

MLP = {"name": "digits", "train": {"workers": 2, "epochs": 14, "batch_size": 32, "lr": 0.002,
                                   "checkpoint_every": 1, "max_failures": 2}}


def latest_checkpoint_epoch(run_dir: Path) -> int:
    """The highest epoch among the checkpoints Ray Train has persisted for this run."""
    epochs = [json.loads(m.read_text())["epoch"] for m in run_dir.glob("checkpoint_*/metrics.json")]
    return max(epochs, default=-1)


def wait_for_checkpoint(run_dir: Path, epoch: int, timeout_s: float,
                        alive: Callable[[], bool]) -> float:
    """Seconds until a checkpoint of ``epoch`` or later is on disk; fails when the run ends
    first or ``timeout_s`` passes."""
    started = time.monotonic()
    while latest_checkpoint_epoch(run_dir) < epoch:
        assert alive(), "training ended before the checkpoint the test waits for"
        assert time.monotonic() - started < timeout_s, \
            f"no checkpoint of epoch >= {epoch} in {timeout_s}s"
        time.sleep(0.2)
    return time.monotonic() - started


def train_workers() -> list[Any]:
    """The Ray Train worker actors alive now (pid, node_id, ...)."""
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


@dataclass
class FaultedRun:
    model_cfg: ModelConfig
    result: Any  # jobs.train's TrainOutcome
    at_fault: int  # newest checkpoint epoch on disk when the fault struck
    recovery_s: float  # fault -> a newer checkpoint on disk

    def row(self, test: str, fault: str, note: str = "") -> dict:
        """This run's figures as a RELIABILITY.md row."""
        epochs = self.model_cfg.train.epochs
        return {"test": test, "fault": fault,
                "load": f"{epochs} epochs{note}; checkpoint {self.at_fault} on disk at the "
                        f"fault, resumed from {self.result.metrics['restored_from_epoch']}",
                "sent": epochs, "failed": 0, "retries": 1, "recovery_s": self.recovery_s,
                "command": "make test-reliability"}


def train_through(tmp_path: Path, run_name: str, fault: Callable[[], None],
                  **train: Any) -> FaultedRun:
    """Train the MLP (``train`` overriding its settings) in a thread; once checkpoint 3 is
    on disk, call ``fault``; return when the run has finished."""
    from jobs.train import run_training
    from maas.data import load_splits

    model_cfg = parse_config({"state_dir": str(tmp_path), "models": [
        MLP | {"train": MLP["train"] | train}]}).models[0]
    splits = load_splits(model_cfg.data)
    run_dir = tmp_path / "train" / run_name
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run_training(
        model_cfg, splits, tmp_path / "train", run_name, [])))
    runner.start()
    # Epoch 3 on disk means Ray Train has registered epoch >= 1: a file can land on storage
    # a moment before the controller records it as the checkpoint to resume from.
    wait_for_checkpoint(run_dir, 3, 180, runner.is_alive)
    at_fault = latest_checkpoint_epoch(run_dir)
    fault()
    recovery_s = wait_for_checkpoint(run_dir, at_fault + 1, 300, runner.is_alive)
    runner.join(timeout=300)
    assert not runner.is_alive()
    return FaultedRun(model_cfg, outcome["result"], at_fault, recovery_s)


def assert_resumed_and_met_the_bar(run: FaultedRun) -> None:
    """The run finished every epoch, resumed from a checkpoint rather than from scratch, and
    its model reaches 95% held-out accuracy."""
    from maas.data import load_splits
    from maas.models import evaluate

    result = run.result
    assert result.metrics["epoch"] == run.model_cfg.train.epochs - 1
    assert result.metrics["restored_from_epoch"] >= 1  # resumed, not restarted from scratch
    splits = load_splits(run.model_cfg.data)
    accuracy = evaluate(result.model, splits.x_test, splits.y_test, "classification")["accuracy"]
    assert accuracy >= 0.95
