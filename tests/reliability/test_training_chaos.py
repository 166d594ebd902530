"""Ray Train under faults: a killed worker and a killed driver both resume from a checkpoint.

Workers are found through Ray's state API and killed by PID, as a real crash would end them.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from jobs.train import run_training
from maas.config import parse_config
from maas.data import load_splits
from maas.models import evaluate

pytestmark = pytest.mark.reliability
COMMAND = "make test-reliability"
REPO = Path(__file__).resolve().parents[2]
MLP = {"name": "digits", "train": {"workers": 2, "epochs": 14, "batch_size": 32, "lr": 0.002,
                                   "checkpoint_every": 1, "max_failures": 2}}


def _latest_checkpoint_epoch(run_dir: Path) -> int:
    """The highest epoch among the checkpoints Ray Train has persisted for this run."""
    import json

    epochs = [json.loads(m.read_text())["epoch"] for m in run_dir.glob("checkpoint_*/metrics.json")]
    return max(epochs, default=-1)


def _wait_for_checkpoint(run_dir: Path, epoch: int, timeout_s: float,
                         alive: "callable[[], bool]") -> None:
    deadline = time.monotonic() + timeout_s
    while _latest_checkpoint_epoch(run_dir) < epoch:
        assert alive(), "training ended before the checkpoint the test waits for"
        assert time.monotonic() < deadline, f"no checkpoint of epoch >= {epoch} in {timeout_s}s"
        time.sleep(0.2)


def _resumed_after(run_dir: Path, epoch: int, timeout_s: float) -> float:
    """Seconds until a checkpoint newer than ``epoch`` is on disk: training goes on again."""
    started = time.monotonic()
    while _latest_checkpoint_epoch(run_dir) <= epoch:
        assert time.monotonic() - started < timeout_s, f"no new checkpoint in {timeout_s}s"
        time.sleep(0.2)
    return time.monotonic() - started


def _train_worker_pids() -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


def test_killed_worker_resumes_from_checkpoint_and_meets_the_bar(serve_port, tmp_path, figures):
    cfg = parse_config({"state_dir": str(tmp_path), "models": [MLP]})
    model_cfg = cfg.models[0]
    splits = load_splits(model_cfg.data)
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run_training(
        model_cfg, splits, tmp_path / "train", "kill-worker", [])))
    runner.start()
    # Epoch 3 on disk means Ray Train has registered epoch >= 1: a file can land on storage
    # a moment before the controller records it as the checkpoint to resume from.
    _wait_for_checkpoint(tmp_path / "train" / "kill-worker", 3, 180, runner.is_alive)

    pids = _train_worker_pids()
    assert len(pids) == 2
    at_kill = _latest_checkpoint_epoch(tmp_path / "train" / "kill-worker")
    os.kill(pids[1], signal.SIGKILL)
    recovery = _resumed_after(tmp_path / "train" / "kill-worker", at_kill, 300)
    runner.join(timeout=300)
    assert not runner.is_alive()

    result = outcome["result"]
    figures.append({"test": "kill a training worker", "fault": "SIGKILL 1 of 2 Ray Train "
                                                               "workers mid-epoch",
                    "load": f"{model_cfg.train.epochs} epochs; checkpoint {at_kill} on disk at "
                            f"the kill, resumed from {result.metrics['restored_from_epoch']}",
                    "sent": model_cfg.train.epochs, "failed": 0, "retries": 1,
                    "recovery_s": recovery, "command": COMMAND})
    assert result.metrics["epoch"] == model_cfg.train.epochs - 1
    assert result.metrics["restored_from_epoch"] >= 1  # resumed, not restarted from scratch
    assert evaluate(result.model, splits.x_test, splits.y_test, "classification")["accuracy"] >= 0.95


def test_killed_driver_resumes_by_run_name(serve_port, tmp_path, figures):
    import ray
    from mlflow.tracking import MlflowClient
    from ray import serve

    from jobs.pipeline import run_pipeline

    doc = {"state_dir": str(tmp_path), "cluster": {"http_port": serve_port}, "models": [MLP]}
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = os.environ | {"RAY_ADDRESS": ray.get_runtime_context().gcs_address,
                        "RAY_AUTH_MODE": "token"}
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "jobs.pipeline", str(config),
                                   "--run-name", "nightly"], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    run_dir = tmp_path / "train" / "digits-nightly"
    try:
        _wait_for_checkpoint(run_dir, 3, 240, lambda: driver.poll() is None)
    finally:
        driver.kill()  # the driver dies mid-training, as on a lost laptop or a killed job
        driver.wait(timeout=30)
    interrupted_at = _latest_checkpoint_epoch(run_dir)
    assert interrupted_at < MLP["train"]["epochs"] - 1, log_path.read_text()[-3000:]

    cfg = parse_config(doc)
    resubmitted = time.monotonic()
    (report,) = run_pipeline(cfg, run_name="nightly")
    figures.append({"test": "kill the training driver", "fault": "SIGKILL the pipeline driver "
                                                                 "mid-training; run it again",
                    "load": f"{MLP['train']['epochs']} epochs; checkpoint {interrupted_at} on "
                            f"disk at the kill",
                    "sent": MLP["train"]["epochs"], "failed": 0, "retries": 1,
                    "recovery_s": time.monotonic() - resubmitted,
                    "command": COMMAND})
    try:
        assert report.run_name == "digits-nightly"
        assert report.held_out_accuracy >= 0.95
        client = MlflowClient(tracking_uri=cfg.tracking_uri)
        run = client.get_run(report.mlflow_run_id)
        assert run.data.tags["maas.run_name"] == "digits-nightly"  # the same MLflow run, continued
        restored = [m.value for m in client.get_metric_history(report.mlflow_run_id,
                                                               "restored_from_epoch")]
        assert max(restored) >= 1 and max(restored) <= interrupted_at
        assert run.info.status == "FINISHED"
    finally:
        serve.delete("model-digits")
        serve.delete("maas")


def test_a_torn_ray_snapshot_still_resumes_from_the_newest_checkpoint(serve_port, tmp_path):
    """Ray rewrites its run snapshot in place; a driver killed mid-write leaves it empty.
    Seen in CI: Ray then refused the re-run. maas resumes from the newest checkpoint instead."""
    short = parse_config({"state_dir": str(tmp_path), "models": [
        MLP | {"train": MLP["train"] | {"epochs": 3}}]}).models[0]
    splits = load_splits(short.data)
    run_training(short, splits, tmp_path / "train", "torn", [])
    snapshot = tmp_path / "train" / "torn" / "checkpoint_manager_snapshot.json"
    assert snapshot.is_file()
    snapshot.write_text("")  # what a kill during Ray's write leaves behind

    longer = short.model_copy(update={"train": short.train.model_copy(update={"epochs": 5})})
    outcome = run_training(longer, splits, tmp_path / "train", "torn", [])
    assert outcome.metrics["restored_from_epoch"] == 2
    assert outcome.metrics["epoch"] == 4
    assert (snapshot.parent / "checkpoint_manager_snapshot.json.torn").is_file()
