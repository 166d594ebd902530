"""The OpenAI-compatible API in front of the text-embedding and chat models, at ``/v1``.

    POST /v1/embeddings     {"model": "minilm", "input": "text" | ["text", ...],
                             "encoding_format": "float" | "base64"}
    POST /v1/chat/completions   {"model": "smollm2", "messages": [...], "stream": true, ...}
    POST /v1/completions        {"model": "smollm2", "prompt": "...", ...}
    GET  /v1/models         GET /v1/models/<name>         GET /v1/health

Chat and completions go to the chat model's own app (serve_apps.llm) over a streaming
DeploymentHandle; its replica checks the key, agreement, rate and token limits and meters the
tokens; this app renders OpenAI's answer or its server-sent events (serve_apps.chat).

Works with the ``openai`` client (``OpenAI(base_url="http://127.0.0.1:8000/v1",
api_key=<maas key>)``). ``model`` is a model name (its production version, or its canary by
``serve.canary_weight``) or ``<name>@<version>``. Each request becomes one Open Inference
Protocol request to the model's own app over a DeploymentHandle, which checks the key, the
agreement, rate and quota and meters it exactly as its ``/v2/models/<name>/infer`` does; so
both routes share one model's replicas, batches and limits. Errors come in OpenAI's shape
(serve_apps.openai_types).
"""

# No `from __future__ import annotations` in serve apps: FastAPI and Serve's typed builders
# read the real annotation objects.
import asyncio
import base64
import time
from collections.abc import Callable

import numpy as np
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from maas.access import ANONYMOUS
from maas.app_args import EmbeddingsArgs
from maas.finetune.runs import TuningJob
from maas.oip import InferenceRequest, InferError, RequestInput
from maas.registry import is_version_number
from maas.routes import OPENAI_APP, model_app_name
from maas.text import OUTPUT_NAME, TEXT_INPUT, TOKENS_OUTPUT
from serve_apps.chat import Rendering
from serve_apps.chat_types import ChatCompletion, ChatRequest, Completion, CompletionRequest
from serve_apps.gate import AccessGate, visible_models
from serve_apps.finetuning import FineTuning
from serve_apps.finetuning_routes import file_routes, job_routes
from serve_apps.http import STREAMED, CallFailure, api_body, read_json_body, validation_error
from serve_apps.openai_api import ERRORS, api
from serve_apps.openai_types import (EmbeddingData, EmbeddingRequest, EmbeddingResponse,
                                     ModelCardOpenAI, ModelList, Usage)

EMBEDDINGS_BODY = api_body(api, EmbeddingRequest)
CHAT_BODY = api_body(api, ChatRequest)
COMPLETIONS_BODY = api_body(api, CompletionRequest)


@serve.deployment
@serve.ingress(api)
class Embeddings(file_routes(), job_routes()):
    """Translates OpenAI requests into calls to the model apps; files and fine-tuning jobs
    (serve_apps.finetuning_routes)."""

    def __init__(self, args: EmbeddingsArgs):
        self.args = args
        self.digest = args.digest()
        self.gate = AccessGate(args.access) if args.access is not None else None
        self.finetuning = FineTuning(args.fine_tuning) if args.fine_tuning else None
        self._handles: dict[str, object] = {}
        self._started = int(time.time())

    @api.get("/health")
    def health(self) -> dict[str, bool | str]:
        return {"live": True, "settings": self.digest}

    def _card(self, name: str) -> ModelCardOpenAI:
        return ModelCardOpenAI(id=name, created=self._started)

    @api.get("/models", response_model=ModelList, responses=ERRORS)
    async def models(self, request: Request) -> ModelList:
        visible = await visible_models(self.gate, request.headers)
        names = sorted({*self.args.models, *self.args.chat_models})
        return ModelList(data=[self._card(n) for n in names if visible(n)]
                         + await self._tuned_cards(request.headers))

    @api.get("/models/{name}", response_model=ModelCardOpenAI, responses=ERRORS)
    async def model(self, name: str, request: Request) -> ModelCardOpenAI:
        visible = await visible_models(self.gate, request.headers)
        tuned = await self._tuned(name, request.headers)
        if tuned is not None:
            return ModelCardOpenAI(id=name, created=int(tuned.finished_at or 0),
                                   owned_by=tuned.tenant)
        if name not in self.args.chat_models or not visible(name):
            self._known(name, visible)
        return self._card(name)

    async def _tenant(self, headers) -> str:
        if self.gate is None:
            return ANONYMOUS
        return (await self.gate.authenticate(headers)).tenant

    async def _tuned_cards(self, headers) -> list[ModelCardOpenAI]:
        """The caller's own fine-tuned models."""
        if self.finetuning is None:
            return []
        jobs = await asyncio.to_thread(self.finetuning.jobs.tuned_models,
                                       await self._tenant(headers))
        return [ModelCardOpenAI(id=job.fine_tuned_model, created=int(job.finished_at or 0),
                                owned_by=job.tenant) for job in jobs]

    async def _tuned(self, name: str, headers) -> TuningJob | None:
        """The job that made the caller's fine-tuned model ``name`` (``ft:...``); None for
        other names; 404 for a name that is not the caller's own (another tenant's alike)."""
        if not name.startswith("ft:") or self.finetuning is None:
            return None
        job = await asyncio.to_thread(self.finetuning.jobs.tuned_model,
                                      await self._tenant(headers), name)
        if job is None:
            raise InferError(404, f"model: no model {name!r} here; `GET /v1/models` lists "
                                  f"yours", param="model")
        return job

    def _known(self, name: str, visible: Callable[[str], bool], chat: bool = False) -> None:
        models = self.args.chat_models if chat else self.args.models
        if name not in models or not visible(name):
            served = sorted(n for n in models if visible(n))
            kind = "a chat" if chat else "an embedding"
            raise InferError(404, f"model: {name!r} is not {kind} model you can use here; "
                                  f"yours: {served}", param="model")

    @staticmethod
    def _version(model: str) -> tuple[str, str]:
        name, _, version = model.partition("@")
        if version and not is_version_number(version):
            raise InferError(400, f"model: {model!r}: after '@' comes a version number",
                             param="model")
        return name, version

    @api.post("/chat/completions", response_model=ChatCompletion,
              responses=ERRORS | STREAMED, openapi_extra=CHAT_BODY)
    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, ChatRequest, "chat")

    @api.post("/completions", response_model=Completion, responses=ERRORS | STREAMED,
              openapi_extra=COMPLETIONS_BODY)
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, CompletionRequest, "complete")

    async def _generate(self, request: Request, kind: type, method: str) -> Response:
        visible = await visible_models(self.gate, request.headers)
        body = await self._body(request, kind)
        name, version = self._version(body.model)
        tuned = await self._tuned(name, request.headers)
        if tuned is None:
            self._known(name, visible, chat=True)
        headers = {k: v for k, v in request.headers.items() if k == "authorization"}
        try:
            handle = (await self._handle(tuned.app_name if tuned else name)).options(stream=True)
            stream = getattr(handle, method).remote(headers, body, version or None)
            first = await anext(stream)
        except Exception as exc:  # noqa: BLE001 - the model's app is down or being replaced
            raise InferError(503, f"model {name!r} cannot answer now ({type(exc).__name__}); "
                                  f"retry, and see `maas status`") from None
        if isinstance(first, CallFailure):  # refused before its first token
            stream.cancel()
            raise first.error()
        rendering = Rendering(body, name)
        if body.stream:
            return StreamingResponse(self._events(rendering, first, stream),
                                     media_type="text/event-stream")
        chunks = [first]
        async for chunk in stream:
            chunks.append(chunk)
        return Response(rendering.whole(chunks).model_dump_json(),
                        media_type="application/json")

    @staticmethod
    async def _events(rendering: Rendering, first, stream):
        """The SSE body; when the client goes away, the replica's generation is cancelled."""
        try:
            async for event in rendering.events(first, stream):
                yield event
        finally:
            stream.cancel()

    @api.post("/embeddings", response_model=EmbeddingResponse, responses=ERRORS,
              openapi_extra=EMBEDDINGS_BODY)
    async def embeddings(self, request: Request) -> Response:
        # Refuse unknown keys before reading a body, and name no model to them.
        visible = await visible_models(self.gate, request.headers)
        body = await self._body(request, EmbeddingRequest)
        name, version = self._version(body.model)
        self._known(name, visible)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > self.args.models[name]:
            raise InferError(400, f"input: send 1 to {self.args.models[name]} texts "
                                  f"(serve.max_rows of {name!r}), got {len(texts)}", param="input")
        oip = InferenceRequest(inputs=[RequestInput(name=TEXT_INPUT, shape=[len(texts)],
                                                    datatype="BYTES", data=texts)])
        headers = {k: v for k, v in request.headers.items() if k == "authorization"}
        try:
            handle = await self._handle(name)
            result = await handle.call.remote(headers, oip, version or None)
        except Exception as exc:  # noqa: BLE001 - the model's app is down or being replaced
            raise InferError(503, f"model {name!r} cannot answer now ({type(exc).__name__}); "
                                  f"retry, and see `maas status`") from None
        if isinstance(result, CallFailure):  # the model app refused it
            raise result.error()
        outputs = {o.name: o for o in result.outputs}
        embedding = outputs[OUTPUT_NAME]
        if body.dimensions is not None and body.dimensions != embedding.shape[1]:
            raise InferError(400, f"dimensions: model {name!r} makes {embedding.shape[1]}-"
                                  f"dimensional embeddings, got {body.dimensions}; leave it out",
                             param="dimensions")
        rows = await asyncio.to_thread(self._rows, embedding.data, embedding.shape[1],
                                       body.encoding_format)
        tokens = int(sum(outputs[TOKENS_OUTPUT].data))
        answer = EmbeddingResponse(data=rows, model=f"{name}@{result.model_version}",
                                   usage=Usage(prompt_tokens=tokens, total_tokens=tokens))
        return Response(answer.model_dump_json(), media_type="application/json")

    async def _body(self, request: Request, kind: type):
        raw = await read_json_body(request.headers, request.receive, self.args.max_body_bytes,
                                   self.args.body_timeout_s)
        try:
            return kind.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None

    @staticmethod
    def _rows(data: list[float], width: int, encoding: str) -> list[EmbeddingData]:
        """The flat embedding values as one answer row per text: slices of the list as they
        came (float), or its rows' float32 bytes (base64)."""
        rows = [data[start:start + width] for start in range(0, len(data), width)]
        if encoding == "base64":
            rows = [base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()
                    for row in rows]
        return [EmbeddingData(index=i, embedding=row) for i, row in enumerate(rows)]

    async def _handle(self, name: str):
        handle = self._handles.get(name)
        if handle is None:  # a blocking call to the Serve controller: off the event loop
            handle = await asyncio.to_thread(serve.get_app_handle, model_app_name(name))
            self._handles[name] = handle
        return handle

    def __del__(self) -> None:
        gate = getattr(self, "gate", None)
        if gate is not None:
            gate.close()


def build_app(args: EmbeddingsArgs) -> Application:
    """Serve entry point: ``serve_apps.embeddings:build_app``; Serve validates the config's
    ``args`` into :class:`maas.app_args.EmbeddingsArgs`."""
    return Embeddings.options(
        name=OPENAI_APP, ray_actor_options={"num_cpus": args.num_cpus},
        logging_config={"enable_access_log": args.access_log},
        max_ongoing_requests=256, graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=5.0).bind(args)
