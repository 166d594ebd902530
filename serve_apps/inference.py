"""One model behind the Open Inference Protocol (v2) REST API, on ONNX Runtime.

Mounted at ``/v2/models/<name>`` by the pipeline (serve_apps.deploy) or by ``serve deploy``
with the file from ``maas serve-config deploy.yaml`` (``serve_apps.inference:build_app``).

    GET  /v2/models/<name>                      GET  /v2/models/<name>/versions/<v>
    GET  /v2/models/<name>/ready                GET  /v2/models/<name>/versions/<v>/ready
    POST /v2/models/<name>/infer                POST /v2/models/<name>/versions/<v>/infer

The unversioned routes serve the registry's ``production`` alias, and a ``canary_weight``
share of them its ``canary`` (serve_apps.versions). Concurrent requests to one version are
batched into one ONNX Runtime call (serve_apps.batching).

With ``access`` set, metadata and infer need an API key (serve_apps.gate): 401, 403 or 429
before the body is read; every infer request is metered per tenant, and its payload logged
only where the model's agreement and the tenant allow it. ``ready`` stays open (health).

A text-embedding version (maas.text) takes a BYTES input of strings: the replica tokenizes
each batch together, padded to its longest text. ``/v1/embeddings`` (serve_apps.embeddings)
reaches the same replicas through :meth:`ModelServer.call`, with the same checks and metering.
"""

# No `from __future__ import annotations` in serve apps: FastAPI and Serve's typed builders
# read the real annotation objects.
import asyncio
import logging
import time
from functools import partial
from typing import Awaitable, Callable, Mapping

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import Application
from starlette.types import Receive

from maas.access import Refusal
from maas.app_args import InferenceArgs
from maas.errors import MaasError
from maas.oip import (BINARY_HEADER, ErrorBody, InferenceRequest, InferenceResponse, InferError,
                      ModelMetadata, datatype_of, parse_request)
from maas.routes import EXPLAIN, explain_usage_name, model_app_name
from serve_apps import REPLICA_LOG
from serve_apps.batching import MicroBatcher
from serve_apps.gate import NOBODY, AccessGate, Admission
from serve_apps.http import CallFailure, api_body, make_api, read_json_body, validation_error
from serve_apps.infer_route import InferFront
from serve_apps.lean import lean_runtime_env, quiet_gc
from serve_apps.metering import ReplicaMetrics
from serve_apps.explain_route import ExplainRequest, explain, parse_explain
from serve_apps.versions import Answer, Loaded, Versions, load
from serve_apps.wire import coalesce_response_heads

api = make_api(title="maas model", description="Open Inference Protocol v2 for one model")
ERRORS = {status: {"model": ErrorBody}
          for status in (400, 401, 403, 404, 408, 411, 413, 415, 429, 503)}
# The infer body is read and validated by hand (size limit, one JSON parse); documented here.
INFER_BODY = api_body(api, InferenceRequest)
EXPLAIN_BODY = api_body(api, ExplainRequest)


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


@serve.deployment
@serve.ingress(api)
class ModelServer:
    """Serves the registry's production (and canary) versions of one model, and any version
    asked for by number, each loaded once per replica and sha256-verified."""

    def __init__(self, args: InferenceArgs):
        # Serve's logger is at WARNING here unless the access log is on (see build_app);
        # maas's own lines (a version loaded, a gate refresh failing) stay at INFO.
        logging.getLogger(REPLICA_LOG).setLevel(logging.INFO)
        self.args = args
        self.digest = args.digest()
        serving = args.serve
        loader = partial(load, threads=serving.ort_threads, spin=serving.ort_spin)
        self.versions = Versions(args.registry(), args.name, args.version,
                                 serving.alias_poll_s, serving.canary_weight, loader=loader)
        self._metrics = ReplicaMetrics(args.access is not None and args.access.metrics_tenants)
        self._metrics_flusher: asyncio.Task | None = None  # started by the first request
        self._in_flight = 0  # infer requests between admission and answer (HTTP and handle)
        self.gate = (AccessGate(args.access, args.name, args.agreement)
                     if args.access is not None else None)
        batching = serving.batching
        self.batcher = MicroBatcher(batching.max_batch_size, batching.wait_ms / 1000.0,
                                    batching.inline_below_ms / 1000.0, self._observe_batch)
        quiet_gc()  # the model is loaded: see serve_apps.lean
        coalesce_response_heads()  # one socket write per answer: see serve_apps.wire

    def __serve_build_asgi_app__(self) -> InferFront:
        """Serve calls this once __init__ has run: the app that takes this replica's HTTP
        requests. Infer requests skip FastAPI's routing (serve_apps.infer_route)."""
        return InferFront(self._http_answer, self.app)

    def _observe_batch(self, size: int) -> None:
        self._metrics.batch_size.observe(size, self.args.name)

    # ---- routes -------------------------------------------------------------------------

    async def _authorize(self, request: Request) -> None:
        """Metadata needs a key whose scope holds this model (no agreement, no rate)."""
        if self.gate is not None:
            self.gate.check_scope(await self.gate.authenticate(request.headers))

    @api.get("/", response_model=ModelMetadata, responses=ERRORS)
    async def metadata(self, request: Request) -> Response:
        await self._authorize(request)
        return _json(self.versions.production.metadata(self.versions.numbers))

    @api.get("/ready")
    def ready(self) -> dict[str, str | bool]:
        # A replica only receives traffic once __init__ (load + verify) has finished.
        return {"name": self.args.name, "version": str(self.versions.production.info.version),
                "ready": True, "settings": self.digest}

    @api.get("/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
    async def version_metadata(self, version: str, request: Request) -> Response:
        await self._authorize(request)
        loaded = await asyncio.to_thread(self.versions.by_number, version)
        return _json(loaded.metadata([str(loaded.info.version)]))

    @api.get("/versions/{version}/ready", responses={404: ERRORS[404], 503: ERRORS[503]})
    def version_ready(self, version: str) -> dict[str, str | bool]:
        self.versions.by_number(version)
        return {"name": self.args.name, "version": version, "ready": True}

    # The two infer routes are answered by InferFront before FastAPI routes a request; they
    # are declared here for the API document (and answer the same if FastAPI is reached).
    @api.post("/infer", response_model=InferenceResponse, responses=ERRORS,
              openapi_extra=INFER_BODY)
    async def infer(self, request: Request) -> Response:
        return Response(await self._http_answer(request.headers, request.receive, None),
                        media_type="application/json")

    @api.post("/versions/{version}/infer", response_model=InferenceResponse, responses=ERRORS,
              openapi_extra=INFER_BODY)
    async def infer_version(self, version: str, request: Request) -> Response:
        return Response(await self._http_answer(request.headers, request.receive, version),
                        media_type="application/json")

    @api.post(f"/{EXPLAIN}", response_model=InferenceResponse, responses=ERRORS,
              openapi_extra=EXPLAIN_BODY)
    async def explain(self, request: Request) -> Response:
        """Per-feature attributions of the served version's output (Integrated Gradients)."""
        return await self._explained(request, None)

    @api.post(f"/versions/{{version}}/{EXPLAIN}", response_model=InferenceResponse,
              responses=ERRORS, openapi_extra=EXPLAIN_BODY)
    async def explain_version(self, version: str, request: Request) -> Response:
        return await self._explained(request, version)

    async def _http_answer(self, headers: Mapping[str, str], receive: Receive,
                           version: str | None) -> bytes:
        answer = await self._measured(headers, version,
                                      lambda: self._request_body(headers, receive))
        return answer.json()

    async def _explained(self, request: Request, version: str | None) -> Response:
        async def body() -> ExplainRequest:
            return parse_explain(await self._raw_body(request.headers, request.receive))

        async def compute(loaded: Loaded, body: ExplainRequest) -> Answer:
            return await asyncio.to_thread(explain, loaded, body, self.args.serve.max_rows)

        answer = await self._measured(request.headers, version, body, compute,
                                      explain_usage_name(self.args.name))
        return Response(answer.json(), media_type="application/json")

    async def call(self, headers: dict[str, str], body: InferenceRequest,
                   version: str | None = None) -> InferenceResponse | CallFailure:
        """An infer request from another app over a DeploymentHandle (the OpenAI-compatible
        embeddings route): the same checks, metering and payload terms as over HTTP, with
        ``headers`` (lower-case names) standing for the HTTP request's."""
        async def given() -> InferenceRequest:
            return body

        try:
            return (await self._measured(headers, version, given)).response()
        except MaasError as exc:
            return CallFailure(exc.status, exc.message, exc.headers)

    # ---- one request ----------------------------------------------------------------------

    async def _measured(self, headers: Mapping[str, str], version: str | None,
                        read_body: Callable[[], Awaitable[InferenceRequest]],
                        compute: Callable[[Loaded, InferenceRequest], Awaitable[Answer]]
                        | None = None, metered_as: str | None = None) -> Answer:
        """Answer one infer request (or ``compute``'s, e.g. an explanation) and count it, by
        version and status, with its latency, as ``metered_as`` (default: the model's name).
        The body is read only once the request's key is admitted."""
        started = time.perf_counter()
        if self._metrics_flusher is None:
            self._metrics_flusher = asyncio.create_task(self._metrics.flush_forever())
        # Tagged only with a version that exists: a path segment is the client's text, and
        # as a metric tag or usage row it would add a series per typo (or fail to encode).
        served, status, rows, counted = "-", 500, 0, False
        admission: Admission = NOBODY
        model = metered_as or self.args.name
        self._in_flight += 1
        try:
            if self.gate is not None:
                admission = await self.gate.admit(headers)
            body = await read_body()
            loaded = (self.versions.pick() if version is None  # by number it may load: off loop
                      else await asyncio.to_thread(self.versions.by_number, version))
            served = str(loaded.info.version)
            answer = await (compute or self._infer)(loaded, body)
            rows, status = answer.rows, 200
            if admission.log_payloads:
                self.gate.log_payload(admission, served, body.id, body.inputs)
            if self.gate is not None and self.gate.waits_for_usage(admission):
                counted = True  # counted now, and answered once the count is stored
                self._count(admission, served, status, rows,
                            (time.perf_counter() - started) * 1000.0, model)
                await self.gate.stored()
            return answer
        except MaasError as exc:
            status = exc.status
            if isinstance(exc, Refusal):  # an access refusal knows whose key it was
                admission = Admission(exc.tenant, exc.key_id, False)
            raise
        finally:
            self._in_flight -= 1
            if not counted:
                ms = (time.perf_counter() - started) * 1000.0
                # Counted in the loop's next turn, once the answer is written: a client does
                # not wait for its own bookkeeping (~20 µs of a request at 1 client, py-spy).
                # The counts reach Ray and the access store a second later at most.
                asyncio.get_running_loop().call_soon(self._count, admission, served, status,
                                                     rows, ms, model)

    def _count(self, admission: Admission, served: str, status: int, rows: int,
               ms: float, model: str) -> None:
        self._metrics.record(admission.tenant, model, served, status, rows, ms)
        if self.gate is not None:
            self.gate.meter.record(admission.tenant, admission.key_id, model, served, status,
                                   rows, ms)

    async def _raw_body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        serving = self.args.serve
        return await read_json_body(headers, receive, serving.max_body_bytes,
                                    serving.body_timeout_s)

    async def _request_body(self, headers: Mapping[str, str], receive: Receive
                            ) -> InferenceRequest:
        raw = await self._raw_body(headers, receive)
        try:
            return parse_request(raw, headers.get(BINARY_HEADER))
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None

    async def _infer(self, loaded: Loaded, request: InferenceRequest) -> Answer:
        feeds = loaded.feeds(request, self.args.serve.max_rows)
        wanted = [o.name for o in request.outputs] if request.outputs else loaded.output_names
        unknown = [name for name in wanted if name not in loaded.output_names]
        if unknown:
            raise InferError(400, f"outputs: unknown output(s) {unknown}; "
                                  f"this model has {loaded.output_names}")
        # Alone in the replica, a request has nobody to share a batch with: it runs at once.
        results = await self.batcher.run((loaded, tuple(wanted), feeds), self._in_flight == 1)
        outputs = [(name, np.asarray(r)) for name, r in zip(wanted, results)]
        for name, array in outputs:  # before the request is counted as answered
            datatype_of(name, array)
        return Answer(loaded, request.id, outputs)

    def __del__(self) -> None:
        versions = getattr(self, "versions", None)
        if versions is not None:
            versions.stop()
        gate = getattr(self, "gate", None)
        if gate is not None:
            gate.close()  # the last second of usage and payloads
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close()


def build_app(args: InferenceArgs) -> Application:
    """Serve entry point: ``serve_apps.inference:build_app``; Serve validates the config's
    ``args`` into :class:`maas.app_args.InferenceArgs`."""
    serving = args.serve
    return ModelServer.options(
        name=model_app_name(args.name),
        ray_actor_options={"num_cpus": serving.cpus_per_replica,
                           "runtime_env": lean_runtime_env()},
        # Clients wait for batching, not in Serve's queue, so let a replica take many at
        # once; beyond its queue, a 503 with Retry-After (serve.max_queued_requests).
        max_ongoing_requests=max(serving.max_ongoing_requests, serving.batching.max_batch_size),
        max_queued_requests=serving.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": serving.retry_after_s},
        # Serve formats an access-log record per request unless its level is above INFO
        # (~3% of a replica's CPU under small requests, measured); with the log off, it is.
        logging_config={"enable_access_log": serving.access_log,
                        "log_level": "INFO" if serving.access_log else "WARNING"},
        # Requests take milliseconds: a replica being replaced or scaled away drains quickly.
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=5.0,
        **serving.scaling_options(),
    ).bind(args)
