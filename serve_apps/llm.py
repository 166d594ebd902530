"""One chat LLM as a Ray Serve app: continuous batching on ONNX Runtime, mounted at
``/v2/models/<name>`` (the pipeline for ``pretrained.task: chat``, or ``maas serve-config``).

    POST /v1/chat/completions, /v1/completions     (serve_apps.embeddings, through :meth:`chat`
                                                    and :meth:`complete` over a handle)
    POST /v2/models/<name>/generate                Triton's generate extension: one JSON answer
    POST /v2/models/<name>/generate_stream         the same as server-sent events
    GET  /v2/models/<name>/ready                   GET /v2/models/<name>/engine  (load: running,
                                                   waiting, cache)

Each replica holds the production (and canary) version's engine (maas.llm.engine), following
the registry's aliases like every model app (serve_apps.versions). Every generation passes the
access gate (key, scope, agreement, request rate), then reserves its prompt + max_tokens
against the key's token limits before it runs, and settles with the engine's own count after.
"""

# No `from __future__ import annotations` in serve apps: FastAPI and Serve's typed builders
# read the real annotation objects.
import asyncio
from functools import partial
from pathlib import Path
from typing import AsyncIterator, Mapping

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application

from maas.app_args import InferenceArgs
from maas.errors import MaasError
from maas.oip import ErrorBody
from maas.routes import model_app_name
from serve_apps.chat_types import ChatRequest, Chunk, CompletionRequest
from serve_apps.gate import NOBODY, AccessGate, Admission
from serve_apps.http import (STREAMED, CallFailure, api_body, make_api, read_json_body,
                             validation_error)
from serve_apps.llm_core import LoadedLLM, chunks, load_llm, prepare
from serve_apps.llm_metrics import LLMMetrics, RequestClock
from serve_apps.metering import ReplicaMetrics
from serve_apps.tokens import TokenReservation, meter_refused, reserve_tokens, settle
from serve_apps.versions import Versions

api = make_api(title="maas chat model", description="Triton's generate extension for one LLM")
ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 408, 413, 429, 503)}
ENGINE_POLL_S = 1.0


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int | None = Field(None, ge=1, description="completion tokens at most")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    seed: int | None = Field(None, ge=0)
    stop: list[str] | None = None


class GenerateRequest(BaseModel):
    """Triton's generate extension: ``text_input`` is the prompt, as is (no chat template)."""

    model_config = ConfigDict(extra="forbid")
    text_input: str = Field(min_length=1)
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


class GenerateResponse(BaseModel):
    model_name: str
    model_version: str
    text_output: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EngineView(BaseModel):
    version: str
    running: int
    waiting: int
    cache_tokens: int
    cache_capacity: int
    steps: int
    finished: dict[str, int]


# Helpers above the class: Serve pickles the deployment class where it is decorated.
def _completion(body: GenerateRequest) -> CompletionRequest:
    parameters = body.parameters
    return CompletionRequest(model="-", prompt=body.text_input, max_tokens=parameters.max_tokens,
                             temperature=parameters.temperature, top_p=parameters.top_p,
                             top_k=parameters.top_k, seed=parameters.seed, stop=parameters.stop)


def _drain(loaded: LoadedLLM) -> None:
    """A replaced version: its engine finishes what it runs, then frees its cache."""
    loaded.model.engine.close(drain=True)


def _prompt_of(body: ChatRequest | CompletionRequest) -> object:
    """What the payload log keeps of a request's prompt: its messages, or its text."""
    if isinstance(body, ChatRequest):
        return [{"role": m.role, "content": m.text()} for m in body.messages]
    return body.prompt


def _generated(name: str, chunk: Chunk | None, text: str) -> GenerateResponse:
    if chunk is None:
        return GenerateResponse(model_name=name, model_version="-", text_output=text)
    return GenerateResponse(model_name=name, model_version=chunk.version, text_output=text,
                            finish_reason=chunk.finish_reason, prompt_tokens=chunk.prompt_tokens,
                            completion_tokens=chunk.completion_tokens)


@serve.deployment
@serve.ingress(api)
class LLMServer:
    """Generates for one chat model: its production and canary versions, and any by number."""

    def __init__(self, args: InferenceArgs):
        self.args = args
        self.digest = args.digest()
        serving = args.serve
        root = Path(args.state_dir).expanduser() / "serving"
        loader = partial(load_llm, root=root, settings=serving.llm, threads=serving.ort_threads,
                         spin=serving.ort_spin)
        # One explicit version besides the aliases: each holds a whole key/value cache.
        self.versions = Versions(args.registry(), args.name, args.version,
                                 serving.alias_poll_s, serving.canary_weight, loader=loader,
                                 explicit_kept=1, release=_drain)
        self.gate = (AccessGate(args.access, args.name, args.agreement, owner=args.owner,
                                base=args.base) if args.access is not None else None)
        self.metrics = LLMMetrics(args.name)
        # maas_requests and token counts, as every model app
        self.requests = ReplicaMetrics(args.access is not None and args.access.metrics_tenants)
        self._poller: asyncio.Task | None = None

    # ---- routes -------------------------------------------------------------------------

    @api.get("/ready")
    def ready(self) -> dict[str, str | bool | int]:
        production = self.versions.production
        return {"name": self.args.name, "version": str(production.info.version), "ready": True,
                "settings": self.digest, "context_length": production.model.context_length}

    @api.get("/engine", response_model=EngineView, responses=ERRORS)
    async def engine(self, request: Request) -> EngineView:
        """The production version's engine, now: sequences running and waiting, cache held."""
        if self.gate is not None:
            self.gate.check_scope(await self.gate.authenticate(request.headers))
        loaded = self.versions.production
        stats = loaded.model.engine.stats()
        return EngineView(version=str(loaded.info.version), running=stats.running,
                          waiting=stats.waiting, cache_tokens=stats.cache_tokens,
                          cache_capacity=stats.cache_capacity, steps=stats.steps,
                          finished=stats.finished)

    @api.post("/generate", response_model=GenerateResponse, responses=ERRORS,
              openapi_extra=api_body(api, GenerateRequest))
    async def generate(self, request: Request) -> Response:
        body = await self._generate_body(request)
        text, last = "", None
        async for chunk in self._stream(request.headers, None, _completion(body)):
            text, last = text + chunk.text, chunk
        return Response(_generated(self.args.name, last, text).model_dump_json(),
                        media_type="application/json")

    @api.post("/generate_stream", openapi_extra=api_body(api, GenerateRequest),
              responses=ERRORS | STREAMED)
    async def generate_stream(self, request: Request) -> StreamingResponse:
        """Server-sent events, one ``data:`` line per piece of text, as Triton sends them."""
        body = await self._generate_body(request)
        stream = self._stream(request.headers, None, _completion(body))
        first = await anext(stream)  # refusals before the first token are plain HTTP errors

        async def events() -> AsyncIterator[str]:
            chunk: Chunk | None = first
            try:
                while chunk is not None:
                    payload = _generated(self.args.name, chunk, chunk.text)
                    yield f"data: {payload.model_dump_json()}\n\n"
                    chunk = await anext(stream, None)
            finally:
                await stream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _generate_body(self, request: Request) -> GenerateRequest:
        serving = self.args.serve
        raw = await read_json_body(request.headers, request.receive, serving.max_body_bytes,
                                   serving.body_timeout_s)
        try:
            return GenerateRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None

    # ---- calls from the /v1 app over a DeploymentHandle -----------------------------------

    async def chat(self, headers: dict[str, str], body: ChatRequest,
                   version: str | None = None) -> AsyncIterator[Chunk | CallFailure]:
        """A streamed chat completion: chunks, or one CallFailure when it is refused."""
        async for item in self._call(headers, body, version):
            yield item

    async def complete(self, headers: dict[str, str], body: CompletionRequest,
                       version: str | None = None) -> AsyncIterator[Chunk | CallFailure]:
        async for item in self._call(headers, body, version):
            yield item

    async def _call(self, headers: Mapping[str, str], body: ChatRequest | CompletionRequest,
                    version: str | None) -> AsyncIterator[Chunk | CallFailure]:
        try:
            async for chunk in self._stream(headers, version, body):
                yield chunk
        except MaasError as exc:
            yield CallFailure(exc.status, exc.message, exc.headers, exc.param)

    # ---- one generation -------------------------------------------------------------------

    async def _stream(self, headers: Mapping[str, str], version: str | None,
                      body: ChatRequest | CompletionRequest) -> AsyncIterator[Chunk]:
        """Admit, prepare, reserve, generate, settle: the chunks of one generation."""
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_engine())
        clock = RequestClock()
        admission: Admission = NOBODY
        reservation: TokenReservation | None = None
        served, status, output_tokens, reason = "-", 200, 0, None
        try:
            if self.gate is not None:
                admission = await self.gate.admit(headers)
            loaded: LoadedLLM = (self.versions.pick() if version is None
                                 else await asyncio.to_thread(self.versions.by_number, version))
            served = str(loaded.info.version)
            prepared = prepare(loaded, body, self.args.serve.llm)
            reservation = await reserve_tokens(self.gate, admission, len(prepared.prompt),
                                               prepared.params.max_tokens, clock.started)
            completion = []
            async for chunk in chunks(loaded, prepared):
                clock.token()
                output_tokens, reason = chunk.completion_tokens, chunk.finish_reason
                completion.append(chunk.text)
                yield chunk
            if admission.log_payloads:  # only where the terms and the tenant allow it
                self.gate.log_text(admission, served, None, _prompt_of(body),
                                   "".join(completion))
            if self.gate is not None and self.gate.waits_for_usage(admission):
                # The stream ends (or the whole answer goes out) once its tokens are stored.
                settle(reservation, output_tokens, served, status, metrics=self.requests)
                await self.gate.stored()
        except MaasError as exc:
            status = exc.status
            if reservation is None:
                meter_refused(self.gate, exc, admission, clock.started, self.requests)
            raise
        finally:
            if reservation is not None:
                # 499: the client went away (or its caller was cancelled) before the end.
                status = 499 if reason is None and status == 200 else status
                settle(reservation, output_tokens, served, status, metrics=self.requests)
                self.metrics.finished(served, clock, reservation.prompt_tokens, output_tokens,
                                      reason or "cancelled")

    async def _poll_engine(self) -> None:
        while True:
            await asyncio.sleep(ENGINE_POLL_S)
            loaded = self.versions.production
            self.metrics.engine(str(loaded.info.version), loaded.model.engine.stats())
            self.requests.flush()

    def __del__(self) -> None:
        versions = getattr(self, "versions", None)
        if versions is not None:
            versions.stop()
        gate = getattr(self, "gate", None)
        if gate is not None:
            gate.close()


def build_app(args: InferenceArgs) -> Application:
    """Serve entry point: ``serve_apps.llm:build_app``, typed args as serve_apps.inference."""
    serving = args.serve
    return LLMServer.options(
        name=model_app_name(args.name),
        ray_actor_options={"num_cpus": serving.cpus_per_replica},
        # Requests wait in the engine's queue (and count for autoscaling), not in Serve's.
        max_ongoing_requests=4 * serving.llm.max_num_seqs,
        logging_config={"enable_access_log": serving.access_log},
        graceful_shutdown_wait_loop_s=1.0, graceful_shutdown_timeout_s=30.0,
        **serving.scaling_options(),
    ).bind(args)
