"""OpenAI's files and fine-tuning routes on ``/v1``, as the ``openai`` client calls them.

    POST   /v1/files                    multipart: file=<JSONL>, purpose=fine-tune
    GET    /v1/files                    GET /v1/files/{id}     GET /v1/files/{id}/content
    DELETE /v1/files/{id}               the bytes are removed
    POST   /v1/fine_tuning/jobs         {"model", "training_file", "validation_file",
                                         "hyperparameters", "suffix", "seed"}
    GET    /v1/fine_tuning/jobs         GET /v1/fine_tuning/jobs/{id}
    GET    /v1/fine_tuning/jobs/{id}/events         POST /v1/fine_tuning/jobs/{id}/cancel

Mixed into the /v1 app's deployment class (serve_apps.embeddings), which sets ``finetuning``
(None: the API is off, 404), ``gate`` and ``args``, and reads JSON bodies (``_body``). Every
route needs a key (401) and answers only for its tenant (serve_apps.finetuning).
"""

import asyncio
from functools import cache
from typing import Any

from fastapi import Query, Request
from fastapi.responses import Response

from maas.access import ANONYMOUS, KeyRecord
from maas.errors import MaasError
from serve_apps.finetuning import FineTuning, parse_upload
from serve_apps.finetuning_types import (FileDeleted, FileList, FileObject, FineTuningJob,
                                         JobCreate, JobEventList, JobEventOut, JobList)
from serve_apps.http import api_body, read_capped
from serve_apps.openai_api import ERRORS, api

JOB_BODY = api_body(api, JobCreate)
# An upload's form, as OpenAPI documents it (the route reads it by hand, within its limit).
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"type": "string", "enum": ["fine-tune"]}}}}}}}


def _tenant(record: KeyRecord | None) -> str:
    return record.tenant if record is not None else ANONYMOUS


def _event_id(after: str | None) -> int | None:
    if after is None:
        return None
    number = after.removeprefix("ftevent-")
    if not number.isdecimal():
        raise MaasError(f"after: {after!r} is not an event id (ftevent-<n>)", status=400,
                        param="after")
    return int(number)


async def _caller(host: Any, request: Request) -> tuple[KeyRecord | None, FineTuning]:
    """The key's record (None: access is off) and the service; 404 when it is off."""
    if host.finetuning is None:
        raise MaasError("fine-tuning is off here: deploy.yaml's fine_tuning.models names "
                        "no model", status=404)
    record = (await host.gate.authenticate(request.headers)
              if host.gate is not None else None)
    return record, host.finetuning


# The route classes are made inside functions on purpose: Serve pickles the app by value, but
# a method of a class importable by name is pickled by reference, and the replica would get it
# without the ``self`` injection Serve's ingress adds (every call a 400, ``query.self``).
@cache
def file_routes() -> type:
    """``/v1/files``, as a mixin of the /v1 deployment class; made once."""

    class FileRoutes:
        @api.post("/files", response_model=FileObject, responses=ERRORS, openapi_extra=UPLOAD_BODY)
        async def upload_file(self, request: Request) -> FileObject:
            record, tuning = await _caller(self, request)
            body = await read_capped(request.headers, request.receive, tuning.upload_limit,
                                     self.args.body_timeout_s, "fine_tuning.max_file_bytes",
                                     "split the file")
            purpose, name, content = await parse_upload(body, request.headers.get("content-type"))
            return FileObject.of(await tuning.save(_tenant(record), purpose, name, content))

        @api.get("/files", response_model=FileList, responses=ERRORS)
        async def list_files(self, request: Request) -> FileList:
            record, tuning = await _caller(self, request)
            files = await asyncio.to_thread(tuning.files.list, _tenant(record))
            return FileList(data=[FileObject.of(f) for f in files])

        @api.get("/files/{file_id}", response_model=FileObject, responses=ERRORS)
        async def get_file(self, file_id: str, request: Request) -> FileObject:
            record, tuning = await _caller(self, request)
            found = await asyncio.to_thread(tuning.files.get, _tenant(record), file_id)
            return FileObject.of(found)

        @api.get("/files/{file_id}/content", responses=ERRORS)
        async def file_content(self, file_id: str, request: Request) -> Response:
            record, tuning = await _caller(self, request)
            content = await asyncio.to_thread(tuning.files.content, _tenant(record), file_id)
            return Response(content, media_type="application/jsonl")

        @api.delete("/files/{file_id}", response_model=FileDeleted, responses=ERRORS)
        async def delete_file(self, file_id: str, request: Request) -> FileDeleted:
            record, tuning = await _caller(self, request)
            deleted = await asyncio.to_thread(tuning.files.delete, _tenant(record), file_id)
            return FileDeleted(id=deleted.file_id)

    return FileRoutes


@cache
def job_routes() -> type:
    """``/v1/fine_tuning/jobs``, as a mixin of the /v1 deployment class; made once."""

    class JobRoutes:
        @api.post("/fine_tuning/jobs", response_model=FineTuningJob, responses=ERRORS,
                  openapi_extra=JOB_BODY)
        async def create_job(self, request: Request) -> FineTuningJob:
            record, tuning = await _caller(self, request)
            body = await self._body(request, JobCreate)
            return FineTuningJob.of(await tuning.create(record, body))

        @api.get("/fine_tuning/jobs", response_model=JobList, responses=ERRORS)
        async def list_jobs(self, request: Request, after: str | None = None,
                            limit: int = Query(20, ge=1, le=100)) -> JobList:
            record, tuning = await _caller(self, request)
            jobs, more = await asyncio.to_thread(tuning.jobs.list, _tenant(record), after, limit)
            return JobList(data=[FineTuningJob.of(j) for j in jobs], has_more=more)

        @api.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob, responses=ERRORS)
        async def get_job(self, job_id: str, request: Request) -> FineTuningJob:
            record, tuning = await _caller(self, request)
            return FineTuningJob.of(await tuning.get(_tenant(record), job_id))

        @api.get("/fine_tuning/jobs/{job_id}/events", response_model=JobEventList,
                 responses=ERRORS)
        async def job_events(self, job_id: str, request: Request, after: str | None = None,
                             limit: int = Query(20, ge=1, le=1000)) -> JobEventList:
            record, tuning = await _caller(self, request)
            job = await asyncio.to_thread(tuning.jobs.get, _tenant(record), job_id)
            events, more = await asyncio.to_thread(tuning.jobs.events, job.job_id,
                                                   _event_id(after), limit)
            return JobEventList(data=[JobEventOut.of(e) for e in events], has_more=more)

        @api.post("/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob,
                  responses=ERRORS)
        async def cancel_job(self, job_id: str, request: Request) -> FineTuningJob:
            record, tuning = await _caller(self, request)
            return FineTuningJob.of(await tuning.cancel(_tenant(record), job_id))

    return JobRoutes
