"""One model behind the Open Inference Protocol (v2) REST API, on ONNX Runtime.

Mounted at ``/v2/models/<name>`` by the pipeline (``serve.run``) or by ``serve deploy`` with
the file from ``maas serve-config deploy.yaml`` (import path ``serve_apps.inference:build_app``).

    GET  /v2/models/<name>                      GET  /v2/models/<name>/versions/<v>
    GET  /v2/models/<name>/ready                GET  /v2/models/<name>/versions/<v>/ready
    POST /v2/models/<name>/infer                POST /v2/models/<name>/versions/<v>/infer

The unversioned routes serve the registry's ``production`` alias, and a ``canary_weight`` share
of them its ``canary``. Every replica re-reads the aliases every ``alias_poll_s`` seconds and
loads (and verifies) a newly promoted version *before* it swaps it in, so a promotion switches
live traffic without failing a request. Explicit versions are loaded on first use and kept (a
few at a time). Concurrent requests to one version are batched into one ONNX Runtime call.

With ``access`` set, metadata and infer need an API key (serve_apps.gate): 401, 403 or 429
before the body is read; every infer request is metered per tenant, and its payload logged
only where the model's agreement and the tenant allow it. ``ready`` stays open (health).

A text-embedding version (maas.text) takes a BYTES input of strings: the replica tokenizes
each batch together, padded to its longest text. ``/v1/embeddings`` (serve_apps.embeddings)
reaches the same replicas through :meth:`ModelServer.call`, with the same checks and metering.
"""

# No `from __future__ import annotations` in serve apps: FastAPI reads the real annotation
# objects of the route methods.
import asyncio
import logging
import random
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from ray.serve import Application

from maas import text
from maas.config import AgreementConfig
from maas.export import ort_session
from maas.oip import (BINARY_HEADER, ErrorBody, InferenceRequest, InferenceResponse, InferError,
                      ModelMetadata, TensorSpec, decode_input, encode_output, parse_request)
from maas.registry import (CANARY, MAX_VERSION, PRODUCTION, RegistryError, VersionInfo,
                           is_version_number)
from serve_apps.args import ReplicaArgs
from serve_apps.gate import ANONYMOUS, AccessGate, Admission, Refusal
from serve_apps.http import (CallFailure, document_models, json_body, make_api,
                              read_json_body, validation_message)

log = logging.getLogger("ray.serve")
EXPLICIT_VERSIONS_KEPT = 4  # explicitly requested versions held in memory besides the aliases


class InferenceArgs(ReplicaArgs):
    """Typed arguments of this app, as written in the serve config."""

    name: str
    version: int | None = Field(
        None, ge=1, description="pin the unversioned routes to this version; null: follow aliases")
    num_replicas: int = Field(1, ge=1)
    autoscaling: dict[str, Any] | None = Field(None, description="maas AutoscalingConfig fields")
    num_cpus: float = Field(0.25, gt=0)
    ort_threads: int = Field(1, ge=1)
    max_rows: int = Field(1024, ge=1)
    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    body_timeout_s: float = Field(10.0, gt=0)
    max_batch_size: int = Field(16, ge=1)
    batch_wait_ms: float = Field(0.0, ge=0)
    canary_weight: float = Field(0.0, ge=0.0, le=1.0)
    alias_poll_s: float = Field(2.0, gt=0)
    access_log: bool = False
    agreement: AgreementConfig | None = Field(None, description="the model's terms of use")


@dataclass(frozen=True)
class Loaded:
    """One verified version with its ONNX Runtime session (and tokenizer, for text)."""

    info: VersionInfo
    session: Any
    input_specs: dict[str, TensorSpec]
    output_names: list[str]
    encoder: text.TextEncoder | None = None

    def metadata(self, versions: list[str]) -> ModelMetadata:
        return ModelMetadata(name=self.info.name, versions=versions, platform="onnxruntime_onnx",
                             inputs=self.info.inputs, outputs=self.info.outputs)

    def run(self, wanted: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The ``wanted`` outputs for ``feeds`` (blocking: call it off the event loop). A
        text model tokenizes here, padding to the longest text of these rows."""
        if self.encoder is None:
            return self.session.run(wanted, feeds)
        texts = feeds[text.TEXT_INPUT].reshape(-1).tolist()
        embeddings, tokens = text.embed(self.session, self.encoder, texts)
        produced = {text.OUTPUT_NAME: embeddings, text.TOKENS_OUTPUT: tokens}
        return [produced[name] for name in wanted]


api = make_api(title="maas model", description="Open Inference Protocol v2 for one model")
ERRORS = {status: {"model": ErrorBody}
          for status in (400, 401, 403, 404, 408, 411, 413, 415, 429, 503)}
# The infer body is read and validated by hand (size limit, one JSON parse); documented here.
INFER_BODY = json_body(InferenceRequest)
document_models(api, InferenceRequest)


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


class _Metrics:
    """Prometheus series of a replica, exported by Ray's metrics agent (``cluster.metrics_port``)
    as ``ray_maas_*``, with Serve's application, deployment and replica tags added.

    Each Ray metric call costs tens of microseconds, a visible share of a small model's
    request, so counts are summed in memory and handed to Ray once a second; latencies and
    batch sizes are observed one by one (a histogram cannot be summed that way)."""

    FLUSH_S = 1.0

    def __init__(self):
        from ray.serve import metrics

        self._requests = metrics.Counter(
            "maas_requests", description="infer requests by tenant, model, version and HTTP "
                                         "status", tag_keys=("tenant", "model", "version", "status"))
        self._rows = metrics.Counter("maas_rows", description="rows answered",
                                     tag_keys=("model", "version"))
        self.latency = metrics.Histogram(
            "maas_request_latency_ms", description="infer latency inside the replica (ms)",
            boundaries=[0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000],
            tag_keys=("model", "version"))
        self.batch_size = metrics.Histogram(
            "maas_batch_size", description="requests per ONNX Runtime call",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256], tag_keys=("model",))
        self._pending: Counter = Counter()  # (tenant, model, version, status) -> requests
        self._pending_rows: Counter = Counter()  # (model, version) -> rows
        self._flushed = time.monotonic()

    def record(self, tenant: str, model: str, version: str, status: int, rows: int,
               ms: float) -> None:
        self._pending[(tenant, model, version, str(status))] += 1
        if status == 200:
            self._pending_rows[(model, version)] += rows
            self.latency.observe(ms, tags={"model": model, "version": version})
        if time.monotonic() - self._flushed >= self.FLUSH_S:
            self.flush()

    async def flush_forever(self) -> None:
        """Flush once a second also when no request comes to do it (the last counts of a
        burst would otherwise wait for the next request). On the replica's event loop, like
        :meth:`record`, so the two never race."""
        while True:
            await asyncio.sleep(self.FLUSH_S)
            if time.monotonic() - self._flushed >= self.FLUSH_S and self._pending:
                self.flush()

    def flush(self) -> None:
        pending, rows = self._pending, self._pending_rows
        self._pending, self._pending_rows = Counter(), Counter()
        self._flushed = time.monotonic()
        for (tenant, model, version, status), count in pending.items():
            self._requests.inc(count, tags={"tenant": tenant, "model": model, "version": version,
                                            "status": status})
        for (model, version), count in rows.items():
            if count:
                self._rows.inc(count, tags={"model": model, "version": version})


@serve.deployment
@serve.ingress(api)
class ModelServer:
    """Serves the registry's production (and canary) versions of one model, and any version
    asked for by number, each loaded once per replica and sha256-verified."""

    def __init__(self, args: InferenceArgs):
        self.args = args
        self.digest = args.digest()
        self.registry = args.registry()
        self._load_lock = threading.Lock()
        self._explicit: OrderedDict[int, Loaded] = OrderedDict()
        self._live: dict[str, Loaded] = {}
        self._versions: list[str] = []
        if args.version is not None:
            self._live = {PRODUCTION: self._load(args.version)}
            self._versions = [str(args.version)]
        else:
            self._refresh()  # no production version: the replica fails to start, saying so
        self._metrics = _Metrics()
        self._metrics_flusher: asyncio.Task | None = None  # started by the first request
        self.gate = (AccessGate(args.access, args.name, args.agreement)
                     if args.access is not None else None)
        self._batched.set_max_batch_size(args.max_batch_size)
        self._batched.set_batch_wait_timeout_s(args.batch_wait_ms / 1000.0)
        self._stop = threading.Event()
        if args.version is None:
            threading.Thread(target=self._watch_aliases, name="maas-alias-watch",
                             daemon=True).start()

    # ---- versions -----------------------------------------------------------------------

    def _load(self, version: int) -> Loaded:
        """Fetch, verify and open ``version`` (RegistryError when it cannot be used)."""
        info = self.registry.get(self.args.name, version)
        encoder = None
        if info.kind == text.KIND:
            encoder = text.TextEncoder(
                self.registry.load_asset(info, text.TOKENIZER_FILE).decode())
        elif info.kind != "onnx":
            raise RegistryError(f"model {info.name!r} version {info.version} is of kind "
                                f"{info.kind!r}, which this maas release cannot serve; upgrade")
        session = ort_session(self.registry.load(info), threads=self.args.ort_threads)
        log.info("loaded model %s version %s (%s, %s, sha256 %s)", info.name, info.version,
                 info.kind, info.variant, info.sha256)
        return Loaded(info, session, {s.name: s for s in info.inputs},
                      [s.name for s in info.outputs], encoder)

    def _cached(self, version: int) -> Loaded | None:
        for loaded in self._live.values():
            if loaded.info.version == version:
                return loaded
        return self._explicit.get(version)

    def _refresh(self) -> None:
        """Re-read the aliases; load what they point at, then swap it in all at once."""
        aliases = self.registry.aliases(self.args.name)
        if PRODUCTION not in aliases:
            raise RegistryError(f"model {self.args.name!r} has no production version; "
                                f"`maas models promote {self.args.name} VERSION` sets one")
        live = {}
        for alias in (PRODUCTION, CANARY):
            if alias in aliases:
                with self._load_lock:
                    live[alias] = self._cached(aliases[alias]) or self._load(aliases[alias])
        self._live = live  # one assignment: a request sees the old set or the new, never half
        self._versions = [str(v) for v in self.registry.version_numbers(self.args.name)]

    def _watch_aliases(self) -> None:
        while not self._stop.wait(self.args.alias_poll_s):
            try:
                self._refresh()
            except Exception as exc:  # keep serving what is loaded; say why it did not change
                log.warning("model %s: aliases not refreshed: %s", self.args.name, exc)

    def _pick(self) -> Loaded:
        live = self._live
        canary = live.get(CANARY)
        if canary is not None and self.args.canary_weight > 0.0 \
                and random.random() < self.args.canary_weight:
            return canary
        return live[PRODUCTION]

    def _by_number(self, version: str) -> Loaded:
        """The loaded ``version`` (a path segment); 404 for one that is not registered."""
        if not is_version_number(version) or not 1 <= int(version) <= MAX_VERSION:
            raise InferError(404, f"model {self.args.name!r} has no version {version!r}; "
                                  f"versions: {self._versions}")
        number = int(version)
        with self._load_lock:
            loaded = self._cached(number)
            if loaded is None:
                try:
                    loaded = self._load(number)
                except RegistryError as exc:
                    status = 404 if "has no version" in str(exc) else 503
                    raise InferError(status, str(exc)) from None
            self._explicit[number] = loaded
            self._explicit.move_to_end(number)
            while len(self._explicit) > EXPLICIT_VERSIONS_KEPT:
                self._explicit.popitem(last=False)
        return loaded

    # ---- routes -------------------------------------------------------------------------

    async def _authorize(self, request: Request) -> None:
        """Metadata needs a key whose scope holds this model (no agreement, no rate)."""
        if self.gate is not None:
            self.gate.check_scope(await self.gate.authenticate(request.headers), self.args.name)

    @api.get("/", response_model=ModelMetadata, responses=ERRORS)
    async def metadata(self, request: Request) -> Response:
        await self._authorize(request)
        return _json(self._live[PRODUCTION].metadata(self._versions))

    @api.get("/ready")
    def ready(self) -> dict[str, str | bool]:
        # A replica only receives traffic once __init__ (load + verify) has finished.
        return {"name": self.args.name, "version": str(self._live[PRODUCTION].info.version),
                "ready": True, "settings": self.digest}

    @api.get("/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
    async def version_metadata(self, version: str, request: Request) -> Response:
        await self._authorize(request)
        loaded = await asyncio.to_thread(self._by_number, version)
        return _json(loaded.metadata([str(loaded.info.version)]))

    @api.get("/versions/{version}/ready", responses=ERRORS)
    def version_ready(self, version: str) -> dict[str, str | bool]:
        self._by_number(version)
        return {"name": self.args.name, "version": version, "ready": True}

    @api.post("/infer", response_model=InferenceResponse, responses=ERRORS,
              openapi_extra=INFER_BODY)
    async def infer(self, request: Request) -> Response:
        return _json(await self._measured(request.headers, None,
                                          lambda: self._request_body(request)))

    @api.post("/versions/{version}/infer", response_model=InferenceResponse, responses=ERRORS,
              openapi_extra=INFER_BODY)
    async def infer_version(self, version: str, request: Request) -> Response:
        return _json(await self._measured(request.headers, version,
                                          lambda: self._request_body(request)))

    async def call(self, headers: dict[str, str], body: InferenceRequest,
                   version: str | None = None) -> InferenceResponse | CallFailure:
        """An infer request from another app over a DeploymentHandle (the OpenAI-compatible
        embeddings route): the same checks, metering and payload terms as over HTTP, with
        ``headers`` (lower-case names) standing for the HTTP request's."""
        async def given() -> InferenceRequest:
            return body

        try:
            return await self._measured(headers, version, given)
        except InferError as exc:
            return CallFailure(exc.status, exc.message, exc.headers)

    async def _measured(self, headers: Mapping[str, str], version: str | None,
                        read_body: Callable[[], Awaitable[InferenceRequest]]
                        ) -> InferenceResponse:
        """Answer one infer request and count it, by version and status, with its latency.
        The body is read only once the request's key is admitted."""
        started = time.perf_counter()
        if self._metrics_flusher is None:
            self._metrics_flusher = asyncio.create_task(self._metrics.flush_forever())
        # Tagged only with a version that exists: a path segment is the client's text, and
        # as a metric tag or usage row it would add a series per typo (or fail to encode).
        served, status, rows = "-", 500, 0
        admission = Admission(ANONYMOUS, ANONYMOUS, False)
        try:
            if self.gate is not None:
                admission = await self.gate.admit(headers)
            body = await read_body()
            if version is None:
                loaded = self._pick()
            else:
                loaded = await asyncio.to_thread(self._by_number, version)  # may load: off loop
            served = str(loaded.info.version)
            response = await self._infer(loaded, body)
            rows = response.outputs[0].shape[0] if response.outputs[0].shape else 1
            status = 200
            if admission.log_payloads:
                self.gate.log_payload(admission, served, body.id,
                                      [t.model_dump() for t in body.inputs])
            return response
        except InferError as exc:
            status = exc.status
            if isinstance(exc, Refusal):  # an access refusal knows whose key it was
                admission = Admission(exc.tenant, exc.key_id, False)
            raise
        finally:
            ms = (time.perf_counter() - started) * 1000.0
            self._metrics.record(admission.tenant, self.args.name, served, status, rows, ms)
            if self.gate is not None:
                self.gate.meter.record(admission.tenant, admission.key_id, self.args.name,
                                       served, status, rows, ms)

    # ---- inference ----------------------------------------------------------------------

    async def _request_body(self, request: Request) -> InferenceRequest:
        raw = await read_json_body(request, self.args.max_body_bytes, self.args.body_timeout_s)
        try:
            return parse_request(raw, request.headers.get(BINARY_HEADER))
        except ValidationError as exc:
            raise InferError(400, validation_message(exc.errors())) from None

    async def _infer(self, loaded: Loaded, request: InferenceRequest) -> InferenceResponse:
        feeds = self._decode(loaded, request)
        wanted = [o.name for o in request.outputs] if request.outputs else loaded.output_names
        unknown = [name for name in wanted if name not in loaded.output_names]
        if unknown:
            raise InferError(400, f"outputs: unknown output(s) {unknown}; "
                                  f"this model has {loaded.output_names}")
        if self.args.max_batch_size > 1:
            results = await self._batched((loaded, tuple(wanted), feeds))
        else:
            results = await asyncio.to_thread(loaded.run, wanted, feeds)
        return InferenceResponse(
            model_name=loaded.info.name, model_version=str(loaded.info.version), id=request.id,
            outputs=[encode_output(name, np.asarray(r)) for name, r in zip(wanted, results)])

    def _decode(self, loaded: Loaded, request: InferenceRequest) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(request.inputs):
            spec = loaded.input_specs.get(tensor.name)
            if spec is None:
                raise InferError(400, f"inputs[{index}].name: unknown input {tensor.name!r}; "
                                      f"this model takes {sorted(loaded.input_specs)}")
            feeds[tensor.name] = decode_input(tensor, spec, index, self.args.max_rows)
        missing = sorted(set(loaded.input_specs) - set(feeds))
        if missing:
            raise InferError(400, f"inputs: missing input(s) {missing}")
        return feeds

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _batched(self, items: list[tuple[Loaded, tuple[str, ...], dict[str, np.ndarray]]]
                       ) -> list[list[np.ndarray]]:
        """Requests for the same version, outputs and row shape run as one ONNX Runtime call;
        each gets its own rows back."""
        groups: dict[tuple, list[int]] = {}
        for i, (loaded, wanted, feeds) in enumerate(items):
            shapes = tuple((k, v.shape[1:]) for k, v in sorted(feeds.items()))
            groups.setdefault((id(loaded), wanted, shapes), []).append(i)
        self._metrics.batch_size.observe(len(items), tags={"model": self.args.name})
        results: list[list[np.ndarray]] = [[] for _ in items]
        for members in groups.values():
            loaded, wanted, first = items[members[0]]
            feeds = first if len(members) == 1 else {
                name: np.concatenate([items[i][2][name] for i in members]) for name in first}
            outputs = await asyncio.to_thread(loaded.run, list(wanted), feeds)
            rows = [len(next(iter(items[i][2].values()))) for i in members]
            if len(members) > 1 and any(o.ndim == 0 or len(o) != sum(rows) for o in outputs):
                # An output that is not one row per input row cannot be split: run singly.
                for i in members:
                    results[i] = await asyncio.to_thread(loaded.run, list(wanted), items[i][2])
                continue
            offsets = np.cumsum([0] + rows)
            for i, start, end in zip(members, offsets[:-1], offsets[1:]):
                results[i] = [o[start:end] for o in outputs]
        return results

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        gate = getattr(self, "gate", None)
        if gate is not None:
            gate.close()  # the last second of usage and payloads


def build_app(args: dict) -> Application:
    """Serve entry point: ``serve_apps.inference:build_app`` with :class:`InferenceArgs`."""
    parsed = InferenceArgs.model_validate(args)
    scaling: dict[str, Any] = ({"autoscaling_config": parsed.autoscaling} if parsed.autoscaling
                               else {"num_replicas": parsed.num_replicas})
    return ModelServer.options(
        name=f"model-{parsed.name}",
        ray_actor_options={"num_cpus": parsed.num_cpus},
        # Clients wait for batching, not in Serve's queue, so let a replica take many at once.
        max_ongoing_requests=max(64, 4 * parsed.max_batch_size),
        logging_config={"enable_access_log": parsed.access_log},
        # Requests take milliseconds: a replica being replaced or scaled away drains quickly.
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=5.0,
        **scaling,
    ).bind(parsed)
