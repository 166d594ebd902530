"""Tenants' fine-tuning jobs and their events, in the access store.

    jobs = JobStore(access_url)
    job = jobs.create(tenant, "smollm2", "orders", training_file, None, hyper, seed=0)
    jobs.set_status(job.job_id, "running")          # False once the job ended (cancelled...)
    jobs.add_event(job.job_id, "step 3/20: train loss 1.21", data={"step": 3, ...})
    jobs.get(tenant, job.job_id)                    # 404 for another tenant's job

The /v1 app creates a job and submits a Ray job for it; the Ray job (jobs.finetune_service)
writes its status and events here. A job that ended stays ended: a late write from a
cancelled job's driver changes nothing.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from maas.access.database import engine
from maas.access.tables import tuning_events, tuning_jobs
from maas.config.base import StrictModel
from maas.errors import MaasError

ACTIVE = ("validating_files", "queued", "running")
ENDED = ("succeeded", "failed", "cancelled")


class JobNotFound(MaasError):
    status = 404


class Hyperparameters(StrictModel):
    """A job's hyperparameters as OpenAI names them, resolved (no "auto" left)."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


@dataclass(frozen=True)
class JobError:
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class TuningJob:
    job_id: str
    tenant: str
    base: str
    suffix: str | None
    training_file: str
    validation_file: str | None
    hyperparameters: Hyperparameters
    seed: int
    status: str
    app_name: str  # the tuned model's name in the registry and Serve
    fine_tuned_model: str | None
    error: JobError | None
    trained_tokens: int | None
    created_at: float
    finished_at: float | None

    @property
    def public_name(self) -> str:
        """OpenAI's convention: ``ft:<base>:<tenant>:<suffix>:<id>``."""
        return f"ft:{self.base}:{self.tenant}:{self.suffix or ''}:{self.app_name[3:]}"


@dataclass(frozen=True)
class JobEvent:
    event_id: int
    job_id: str
    created_at: float
    level: str
    message: str
    data: dict[str, Any] | None


def _job(row: sa.Row) -> TuningJob:
    error = JobError(**json.loads(row.error)) if row.error else None
    return TuningJob(row.job_id, row.tenant, row.base, row.suffix, row.training_file,
                     row.validation_file, Hyperparameters.model_validate_json(
                         row.hyperparameters), row.seed, row.status, row.app_name,
                     row.fine_tuned_model, error, row.trained_tokens, row.created_at,
                     row.finished_at)


class JobStore:
    """Reads and atomic writes of the jobs in the access store at ``url``."""

    def __init__(self, url: str):
        self.engine = engine(url)

    def create(self, tenant: str, base: str, suffix: str | None, training_file: str,
               validation_file: str | None, hyper: Hyperparameters, seed: int) -> TuningJob:
        token = secrets.token_hex(6)
        with self.engine.begin() as conn:
            conn.execute(tuning_jobs.insert().values(
                job_id=f"ftjob-{token}", tenant=tenant, base=base, suffix=suffix,
                training_file=training_file, validation_file=validation_file,
                hyperparameters=hyper.model_dump_json(), seed=seed, status="queued",
                app_name=f"ft-{token}", created_at=time.time()))
        return self.find(f"ftjob-{token}")  # type: ignore[return-value]

    def find(self, job_id: str) -> TuningJob | None:
        with self.engine.connect() as conn:
            row = conn.execute(tuning_jobs.select()
                               .where(tuning_jobs.c.job_id == job_id)).first()
        return _job(row) if row else None

    def get(self, tenant: str, job_id: str) -> TuningJob:
        """``tenant``'s job ``job_id``; 404 for any other (another tenant's alike)."""
        job = self.find(job_id)
        if job is None or job.tenant != tenant:
            raise JobNotFound(f"fine_tuning_job_id: no job {job_id!r} here (`GET "
                              f"/v1/fine_tuning/jobs` lists yours)", param="fine_tuning_job_id")
        return job

    def list(self, tenant: str, after: str | None = None, limit: int = 20
             ) -> tuple[list[TuningJob], bool]:
        """``tenant``'s jobs, newest first, from the one after ``after``: (jobs, has_more)."""
        query = tuning_jobs.select().where(tuning_jobs.c.tenant == tenant)
        if after:
            query = query.where(tuning_jobs.c.created_at < self.get(tenant, after).created_at)
        query = query.order_by(tuning_jobs.c.created_at.desc()).limit(limit + 1)
        with self.engine.connect() as conn:
            jobs = [_job(row) for row in conn.execute(query)]
        return jobs[:limit], len(jobs) > limit

    def recent(self, tenant: str | None = None, limit: int = 50) -> list[TuningJob]:
        """The newest jobs of every tenant (or of ``tenant``): the operator's view."""
        query = tuning_jobs.select().order_by(tuning_jobs.c.created_at.desc()).limit(limit)
        if tenant is not None:
            query = query.where(tuning_jobs.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [_job(row) for row in conn.execute(query)]

    def active(self, tenant: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(tuning_jobs).where(
                tuning_jobs.c.tenant == tenant, tuning_jobs.c.status.in_(ACTIVE))).scalar_one()

    def set_status(self, job_id: str, status: str, error: JobError | None = None,
                   fine_tuned_model: str | None = None, trained_tokens: int | None = None
                   ) -> bool:
        """Move a job that has not ended to ``status``: whether it moved."""
        values: dict[str, Any] = {"status": status}
        if status in ENDED:
            values["finished_at"] = time.time()
        if error is not None:
            values["error"] = json.dumps(error.__dict__)
        if fine_tuned_model is not None:
            values["fine_tuned_model"] = fine_tuned_model
        if trained_tokens is not None:
            values["trained_tokens"] = trained_tokens
        with self.engine.begin() as conn:
            done = conn.execute(tuning_jobs.update().where(
                tuning_jobs.c.job_id == job_id, tuning_jobs.c.status.in_(ACTIVE)).values(**values))
        return done.rowcount == 1

    def add_event(self, job_id: str, message: str, level: str = "info",
                  data: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(tuning_events.insert().values(
                job_id=job_id, created_at=time.time(), level=level, message=message,
                data=json.dumps(data) if data is not None else None))

    def events(self, job_id: str, after: int | None = None, limit: int = 20
               ) -> tuple[list[JobEvent], bool]:
        """The job's events, newest first, older than event ``after``: (events, has_more)."""
        query = tuning_events.select().where(tuning_events.c.job_id == job_id)
        if after is not None:
            query = query.where(tuning_events.c.event_id < after)
        query = query.order_by(tuning_events.c.event_id.desc()).limit(limit + 1)
        with self.engine.connect() as conn:
            events = [JobEvent(r.event_id, r.job_id, r.created_at, r.level, r.message,
                               json.loads(r.data) if r.data else None)
                      for r in conn.execute(query)]
        return events[:limit], len(events) > limit

    def tuned_models(self, tenant: str) -> list[TuningJob]:
        """``tenant``'s jobs whose model serves (status succeeded)."""
        with self.engine.connect() as conn:
            rows = conn.execute(tuning_jobs.select().where(
                tuning_jobs.c.tenant == tenant, tuning_jobs.c.status == "succeeded")
                .order_by(tuning_jobs.c.finished_at))
            return [_job(row) for row in rows]

    def tuned_model(self, tenant: str, name: str) -> TuningJob | None:
        """The succeeded job of ``tenant`` whose model is ``name`` (None: not theirs)."""
        with self.engine.connect() as conn:
            row = conn.execute(tuning_jobs.select().where(
                tuning_jobs.c.tenant == tenant, tuning_jobs.c.status == "succeeded",
                tuning_jobs.c.fine_tuned_model == name)).first()
        return _job(row) if row else None
