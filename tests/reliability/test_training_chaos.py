"""Ray Train under faults: a killed worker and a killed driver both resume from a checkpoint.

Workers are found through Ray's state API and killed by PID, as a real crash would end them.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jobs.train import run_training
from maas.config import parse_config
from maas.routes import SERVER_APP
from maas.data import load_splits
from tests.conftest import delete_apps
from tests.reliability.training import (MLP, FaultedRun, assert_resumed_and_met_the_bar,
                                        latest_checkpoint_epoch, train_through, train_workers,
                                        wait_for_checkpoint)

pytestmark = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def killed_worker_run(serve_port, tmp_path_factory) -> FaultedRun:
    """The MLP trained with one of its 2 workers SIGKILLed mid-epoch."""
    def kill_a_worker() -> None:
        pids = [worker.pid for worker in train_workers()]
        assert len(pids) == 2
        os.kill(pids[1], signal.SIGKILL)

    return train_through(tmp_path_factory.mktemp("kill-worker"), "kill-worker", kill_a_worker)


def test_killed_worker_resumes_from_checkpoint_and_meets_the_bar(killed_worker_run, figures):
    run = killed_worker_run
    figures.append(run.row("kill a training worker", "SIGKILL 1 of 2 Ray Train workers "
                                                     "mid-epoch"))
    assert_resumed_and_met_the_bar(run)


def test_killed_driver_resumes_by_run_name(serve_port, tmp_path, figures):
    import ray
    from mlflow.tracking import MlflowClient

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
        wait_for_checkpoint(run_dir, 3, 240, lambda: driver.poll() is None)
    finally:
        driver.kill()  # the driver dies mid-training, as on a lost laptop or a killed job
        driver.wait(timeout=30)
    interrupted_at = latest_checkpoint_epoch(run_dir)
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
                    "command": "make test-reliability"})
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
        delete_apps("model-digits", SERVER_APP)


def test_a_torn_ray_snapshot_still_resumes_from_the_newest_checkpoint(killed_worker_run):
    """Ray rewrites its run snapshot in place; a driver killed mid-write leaves it empty.
    Seen in CI: Ray then refused the re-run. maas resumes from the newest checkpoint instead.
    The killed-worker run above, finished, is given two more epochs after its snapshot is torn."""
    run = killed_worker_run
    last = run.model_cfg.train.epochs - 1
    run_dir = Path(run.result.run_path)  # Ray Train's storage_path / run name
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    assert snapshot.is_file() and latest_checkpoint_epoch(snapshot.parent) == last
    snapshot.write_text("")  # what a kill during Ray's write leaves behind

    longer = run.model_cfg.model_copy(update={"train": run.model_cfg.train.model_copy(
        update={"epochs": last + 3})})
    outcome = run_training(longer, load_splits(longer.data), run_dir.parent, run_dir.name, [])
    assert outcome.metrics["restored_from_epoch"] == last
    assert outcome.metrics["epoch"] == last + 2
    assert (snapshot.parent / "checkpoint_manager_snapshot.json.torn").is_file()
