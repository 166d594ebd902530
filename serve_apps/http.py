"""HTTP plumbing shared by the serve apps: one error mapping, body reading, the API document.

Every refusal is a :class:`maas.errors.MaasError` carrying its status; each app maps it to a
response once (:func:`make_api`), as ``{"error": "..."}`` with a message that names the field,
or in the app's own shape (OpenAI's, for ``/v1``).
"""

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from maas.errors import MaasError, field_path
from maas.oip import InferError

DOCS_STATIC = "/docs/static"  # Swagger UI's files, served by every app (no CDN is reachable)


def validation_error(errors: list[dict]) -> InferError:
    """Pydantic errors as one 400, each problem naming its field (``inputs[0].shape``); the
    first top-level field at fault is the error's ``param``."""
    problems, param = [], None
    for error in errors:
        loc = tuple(p for p in error["loc"] if p != "body")
        if error["type"] == "json_invalid":
            problems.append(f"body: not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})")
        elif not loc:
            problems.append("body: must be a JSON object (send Content-Type: application/json)")
        else:
            problems.append(f"{field_path(loc)}: {error['msg']}")
            if param is None and isinstance(loc[0], str):
                param = loc[0]
    return InferError(400, "; ".join(problems), param=param)


async def read_json_body(headers: Mapping[str, str], receive: Receive, limit: int,
                         timeout_s: float) -> bytes:
    """The request body, refused before it is all read when it is larger than ``limit``
    (413) or still arriving after ``timeout_s`` (408), and refused unread when it is declared
    as something other than JSON (415) or streamed without a length (411). ``headers``:
    lower-case names (a Starlette request's, or serve_apps.infer_route's plain dict)."""
    content_type = headers.get("content-type")
    if content_type:
        media = content_type.split(";")[0].strip().lower()
        if media not in ("application/json", "text/plain") and not media.endswith("+json"):
            raise InferError(415, f"content-type: {media!r} is not accepted; send the body as "
                                  f"JSON with Content-Type: application/json")
    body = await read_capped(headers, receive, limit, timeout_s, "serve.max_body_bytes",
                             "send fewer rows per request")
    if not body:
        raise InferError(400, "body: empty; send an inference request as JSON")
    return body


async def read_capped(headers: Mapping[str, str], receive: Receive, limit: int,
                      timeout_s: float, setting: str, fix: str) -> bytes:
    """The body, at most ``limit`` bytes (413 naming ``setting`` and ``fix`` beyond it, read
    no further), within ``timeout_s`` (408); 411 for a body streamed without a length.
    Read straight from the ASGI ``receive`` (ClientDisconnect when the client leaves)."""
    declared = headers.get("content-length")
    if declared is None and "transfer-encoding" in headers:
        # Serve's proxy and replica buffer a streamed body whatever the handler does (hundreds
        # of MB for one 100 MB upload, measured): only a declared length can be refused unread.
        raise InferError(411, "body: sent without Content-Length (chunked); send the body "
                              "with its Content-Length, as HTTP clients do for a bytes body")
    if declared is not None and declared.isascii() and declared.isdecimal() \
            and int(declared) > limit:
        raise InferError(413, f"body: {int(declared)} bytes is more than the {limit} allowed "
                              f"({setting}); {fix}")
    chunks, size = [], 0
    # One timer that cancels this task, as asyncio.timeout() does, with a quarter of its
    # Python (that was ~20 µs of a request at 1 client, py-spy): every infer request pays it.
    task, expired = asyncio.current_task(), []
    cancelling = task.cancelling() if task is not None else 0

    def expire() -> None:
        if task is not None:
            expired.append(True)
            task.cancel()

    deadline = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # a body sent without (or with a false) Content-Length
                raise InferError(413, f"body: more than the {limit} bytes allowed "
                                      f"({setting}); {fix}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        if expired and task is not None and task.uncancel() <= cancelling:  # our timer's
            raise InferError(408, f"body: {size} bytes received in {timeout_s:g} s and the "
                                  f"rest still missing (serve.body_timeout_s); send the whole "
                                  f"body at once") from None
        raise
    finally:
        deadline.cancel()
    return b"".join(chunks)  # a lone chunk comes back as it is, uncopied


@dataclass(frozen=True)
class CallFailure:
    """An infer call over a DeploymentHandle that was refused: what the HTTP answer would
    have been (the calling app renders it in its own protocol)."""

    status: int
    message: str
    headers: dict[str, str] | None
    param: str | None = None

    def error(self) -> InferError:
        return InferError(self.status, self.message, self.headers, param=self.param)


# A streamed 200 as OpenAPI tells it: server-sent events, each a `data:` line (JSON, or
# OpenAI's final `[DONE]`), documented beside the route's JSON answer.
STREAMED = {200: {"content": {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}}}}

ErrorRenderer = Callable[[MaasError], JSONResponse]


def error_response(error: MaasError) -> JSONResponse:
    """maas's refusal body: ``{"error": "<message naming the field>"}``."""
    return JSONResponse({"error": error.message}, status_code=error.status,
                        headers=error.headers)


def install_error_handlers(app: FastAPI, render: ErrorRenderer = error_response) -> None:
    """Answer every refusal with what ``render`` makes of it: a MaasError as it is, Starlette's
    404/405 with their status, and bad bodies with 400 naming the field (never FastAPI's 422)."""

    @app.exception_handler(MaasError)
    async def _maas_error(_: Request, exc: MaasError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return render(InferError(exc.status_code, str(exc.detail), exc.headers))

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return render(validation_error(exc.errors()))


class PrefixRoot:
    """Route a request for the app's own route prefix (``/v2/models/x``) to its ``/`` route.

    Serve mounts an app at its route prefix, so ``GET /v2/models/x`` arrives with an empty
    route path, which FastAPI answers with a 307 to ``.../x/``; OIP clients expect the
    metadata directly.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] == root:
            scope = dict(scope, path=root + "/", raw_path=(root + "/").encode())
        await self.app(scope, receive, send)


def make_api(title: str, description: str, render: ErrorRenderer = error_response) -> FastAPI:
    """A FastAPI app with the shared error mapping (bodies made by ``render``), prefix-root
    routing, and Swagger UI at ``/docs`` served from the app itself."""
    api = FastAPIOffline(title=title, description=description, static_url=DOCS_STATIC,
                         redoc_url=None)
    install_error_handlers(api, render)
    api.add_middleware(PrefixRoot)
    return api


def api_body(api: FastAPI, model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body by hand (size limit, one parse)
    as ``model``, with ``model`` (and what it nests) added to ``api``'s document: FastAPI
    documents only the models in route signatures, and clients and fuzzers must be able to
    resolve the body's schema."""
    if not hasattr(api.state, "body_models"):
        api.state.body_models = []
        api.openapi = lambda: _document(api)
    api.state.body_models.append(model)
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _document(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document of ``api`` with the hand-read body models in its components."""
    if api.openapi_schema is None:
        document = get_openapi(title=api.title, version=api.version,
                               description=api.description, routes=api.routes,
                               servers=api.servers)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in api.state.body_models:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        api.openapi_schema = document
    return api.openapi_schema
