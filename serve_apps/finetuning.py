"""Tenants' files and fine-tuning jobs behind ``/v1`` (the routes: serve_apps.finetuning_routes).

Every file and job belongs to the tenant of the key that made it; any other tenant gets 404
for it, as for something that does not exist. A job is a Ray job submitted with Ray's job
submission client (``python -m jobs.finetune_service <spec>``): nothing trains inside this
replica. Its status is what the job wrote to the access store, checked against Ray's own
status while it has not ended (a driver that died cannot write ``failed`` itself).
"""

import asyncio
import shlex
import sys
import time
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from maas.access import ANONYMOUS, AccessStore, KeyRecord
from maas.app_args import FineTuningArgs
from maas.config.finetune import FineTuningConfig
from maas.config.govern import TrainingDataConfig
from maas.errors import MaasError
from maas.finetune.runs import ACTIVE, JobError, JobStore, TuningJob
from maas.finetune.spec import TuningSpec, resolve, tuned_model
from maas.finetune.uploads import FileRecord, FileStore, UploadLimits
from serve_apps.finetuning_types import JobCreate

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and part headers around the file


def _refuse(status: int, message: str, param: str | None = None) -> MaasError:
    return MaasError(message, status=status, param=param)


async def parse_upload(body: bytes, content_type: str | None) -> tuple[str, str, bytes]:
    """A multipart form's ``purpose`` and ``file``: (purpose, file name, content)."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise _refuse(415, "content-type: send the file as multipart/form-data with fields "
                           "'file' and 'purpose' (the openai client's files.create does)")

    async def stream():
        yield body
        yield b""

    try:
        form = await MultiPartParser(Headers({"content-type": content_type}), stream(),
                                     max_files=1, max_fields=4).parse()
    except MultiPartException as exc:
        raise _refuse(400, f"body: not a multipart form ({exc.message})") from None
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise _refuse(400, "file: missing; send the JSONL file as the form's 'file' part",
                      "file")
    if not isinstance(purpose, str):
        raise _refuse(400, "purpose: missing; send purpose=fine-tune", "purpose")
    return purpose, upload.filename or "upload.jsonl", await upload.read()


class FineTuning:
    """Files, jobs and the Ray jobs behind them, for the /v1 app's routes."""

    def __init__(self, args: FineTuningArgs):
        self.deploy = args.deploy
        self.service = args.deploy.fine_tuning
        url = args.deploy.access_store
        self.files = FileStore(url, args.deploy.state_path / "files")
        self.jobs = JobStore(url)
        self.access = AccessStore(url)
        self.limits = UploadLimits(self.service.max_file_bytes, self.service.max_file_lines,
                                   self.service.retention_days)
        self.upload_limit = self.service.max_file_bytes + FORM_OVERHEAD
        self._client: JobSubmissionClient | None = None
        self._purged = 0.0

    def _ray(self) -> JobSubmissionClient:
        if self._client is None:  # the dashboard's REST API; blocking: called in a thread
            self._client = JobSubmissionClient(self.deploy.cluster.dashboard_url)
        return self._client

    # ---- files ----

    async def save(self, tenant: str, purpose: str, filename: str, content: bytes) -> FileRecord:
        await self._purge()
        return await asyncio.to_thread(self.files.save, tenant, filename, purpose, content,
                                       self.limits)

    async def _purge(self) -> None:
        """Files past ``fine_tuning.retention_days``, deleted at most once a minute."""
        if time.monotonic() - self._purged > 60.0:
            self._purged = time.monotonic()
            await asyncio.to_thread(self.files.purge)

    # ---- jobs ----

    def _check_base(self, record: KeyRecord | None, base: str) -> TrainingDataConfig | None:
        """``base`` is tunable here, in the key's scope, its agreement accepted and permitting
        fine-tuning: the agreement's training-data clause, if it has one."""
        if base not in self.service.models:
            raise _refuse(404, f"model: {base!r} cannot be fine-tuned here; models you may "
                               f"tune: {list(self.service.models)}", "model")
        agreement = self.access.agreement(base)
        clause = agreement.terms.training_data if agreement is not None else None
        if clause is not None and not clause.fine_tuning:
            raise _refuse(403, f"model: {base!r}'s agreement does not permit fine-tuning "
                               f"(agreement.training_data.fine_tuning: false)", "model")
        if record is None:
            return clause
        if not record.allows(base):
            raise _refuse(403, f"model: {record.label} may not use model {base!r}", "model")
        if agreement is not None and not any(
                a.version == agreement.version for a in self.access.acceptances(base,
                                                                                record.tenant)):
            raise _refuse(403, f"agreement: tenant {record.tenant!r} has not accepted version "
                               f"{agreement.version} of {base!r}'s agreement; `maas agreements "
                               f"accept --tenant {record.tenant} --model {base} --version "
                               f"{agreement.version}`", "model")
        return clause

    def _create(self, record: KeyRecord | None, body: JobCreate) -> TuningJob:
        tenant = record.tenant if record is not None else ANONYMOUS
        clause = self._check_base(record, body.model)
        training = self.files.get(tenant, body.training_file, param="training_file")
        validation = (self.files.get(tenant, body.validation_file, param="validation_file")
                      if body.validation_file else None)
        n_epochs, batch_size, multiplier = body.hyper().values()
        if n_epochs is not None and not 1 <= n_epochs <= self.service.max_epochs:
            raise _refuse(400, f"hyperparameters.n_epochs: 1 to {self.service.max_epochs} "
                               f"(fine_tuning.max_epochs), got {n_epochs}", "hyperparameters")
        if batch_size is not None and not 1 <= batch_size <= 256:
            raise _refuse(400, f"hyperparameters.batch_size: 1 to 256, got {batch_size}",
                          "hyperparameters")
        if multiplier is not None and not 0 < multiplier <= 10:
            raise _refuse(400, f"hyperparameters.learning_rate_multiplier: above 0, at most "
                               f"10, got {multiplier}", "hyperparameters")
        if self.jobs.active(tenant) >= self.service.max_active_jobs:
            raise _refuse(429, f"fine-tuning jobs: tenant {tenant!r} has "
                               f"{self.service.max_active_jobs} queued or running "
                               f"(fine_tuning.max_active_jobs); wait for one to end or "
                               f"cancel one")
        recipe = self.service.recipe
        if body.seed is not None:
            recipe = recipe.model_copy(update={"seed": body.seed})
        hyper, recipe = resolve(recipe, n_epochs, batch_size, multiplier)
        job = self.jobs.create(tenant, body.model, body.suffix, training.file_id,
                               validation.file_id if validation else None, hyper, recipe.seed)
        if clause is not None:  # the base's terms may keep training data for less time
            for upload in (training, validation):
                if upload is not None:
                    self.files.keep_at_most(upload, clause.retention_days)
        model = tuned_model(self.deploy.model(body.model), job.app_name, recipe,
                            self.files.path(training),
                            self.files.path(validation) if validation else None, self.service)
        deploy = self.deploy.model_copy(update={"models": [model],
                                                "fine_tuning": FineTuningConfig()})
        spec = TuningSpec(job_id=job.job_id, tenant=tenant, base=body.model,
                          public_name=job.public_name, deploy=deploy)
        self._submit(job, spec.write(self.deploy.state_path))
        return self.jobs.find(job.job_id)  # type: ignore[return-value]

    def _submit(self, job: TuningJob, spec: Path) -> None:
        # This replica's Python: the cluster's environment, where maas is installed.
        entrypoint = (f"{shlex.quote(sys.executable)} -m jobs.finetune_service "
                      f"{shlex.quote(str(spec))}")
        try:
            self._ray().submit_job(entrypoint=entrypoint, submission_id=job.job_id,
                                   metadata={"maas.kind": "fine-tuning",
                                             "maas.tenant": job.tenant})
        except Exception as exc:  # noqa: BLE001 - the cluster refused it: the job failed
            message = f"Ray did not take the job: {type(exc).__name__}: {exc}"[:2000]
            self.jobs.set_status(job.job_id, "failed", JobError("server_error", message))
            raise _refuse(503, f"fine-tuning job {job.job_id} could not start: {message}; "
                               f"see `maas status`") from None
        self.jobs.add_event(job.job_id, f"Created fine-tuning job {job.job_id} on {job.base}")

    async def create(self, record: KeyRecord | None, body: JobCreate) -> TuningJob:
        return await asyncio.to_thread(self._create, record, body)

    def _reconciled(self, job: TuningJob) -> TuningJob:
        """``job`` as the store has it, corrected by Ray's status while it has not ended."""
        if job.status not in ACTIVE:
            return job
        try:
            info = self._ray().get_job_info(job.job_id)
        except Exception:  # noqa: BLE001 - Ray unreachable: the store's word stands
            return job
        # Ray RUNNING while the store says queued: the driver is starting and writes
        # "running" itself; PENDING and RUNNING leave the store's word as it is.
        if info.status == JobStatus.FAILED:
            message = (info.message or "the Ray job failed")[:2000]
            self.jobs.set_status(job.job_id, "failed", JobError("server_error", message))
        elif info.status == JobStatus.STOPPED:
            self.jobs.set_status(job.job_id, "cancelled")
        else:
            return job
        return self.jobs.find(job.job_id)  # type: ignore[return-value]

    async def get(self, tenant: str, job_id: str) -> TuningJob:
        job = await asyncio.to_thread(self.jobs.get, tenant, job_id)
        return await asyncio.to_thread(self._reconciled, job)

    def _cancel(self, tenant: str, job_id: str) -> TuningJob:
        job = self.jobs.get(tenant, job_id)
        if not self.jobs.set_status(job.job_id, "cancelled"):
            raise _refuse(400, f"fine_tuning_job_id: job {job_id} already {job.status}; only "
                               f"a queued or running job can be cancelled",
                          "fine_tuning_job_id")
        self.jobs.add_event(job.job_id, "Fine-tuning job cancelled", level="warn")
        try:
            self._ray().stop_job(job.job_id)
        except Exception as exc:  # noqa: BLE001 - say it; the status is already cancelled
            self.jobs.add_event(job.job_id, f"Ray job not stopped: {type(exc).__name__}",
                                level="error")
        return self.jobs.find(job.job_id)  # type: ignore[return-value]

    async def cancel(self, tenant: str, job_id: str) -> TuningJob:
        return await asyncio.to_thread(self._cancel, tenant, job_id)
