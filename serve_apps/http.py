"""HTTP plumbing shared by the serve apps: error bodies and prefix-root routing.

Every refusal is ``{"error": "..."}`` with a 4xx code and a message that names the field.
"""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from maas.oip import InferError


def _field_path(loc: tuple) -> str:
    parts = [p for p in loc if p != "body"]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def validation_message(errors: list[dict]) -> str:
    """Pydantic errors as one line, each problem naming its field (``inputs[0].shape``)."""
    problems = []
    for error in errors:
        loc = tuple(p for p in error["loc"] if p != "body")
        if error["type"] == "json_invalid":
            problems.append(f"body: not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})")
        elif not loc:
            problems.append("body: must be a JSON object (send Content-Type: application/json)")
        else:
            problems.append(f"{_field_path(loc)}: {error['msg']}")
    return "; ".join(problems)


async def read_json_body(request: Request, limit: int) -> bytes:
    """The request body, refused before it is all read when it is larger than ``limit``
    (413), and refused when it is declared as something other than JSON (415)."""
    content_type = request.headers.get("content-type")
    if content_type:
        media = content_type.split(";")[0].strip().lower()
        if media not in ("application/json", "text/plain") and not media.endswith("+json"):
            raise InferError(415, f"content-type: {media!r} is not accepted; send the body as "
                                  f"JSON with Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InferError(413, f"body: {int(declared)} bytes is more than the {limit} allowed "
                              f"(serve.max_body_bytes); send fewer rows per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a body sent without (or with a false) Content-Length
            raise InferError(413, f"body: more than the {limit} bytes allowed "
                                  f"(serve.max_body_bytes); send fewer rows per request")
        chunks.append(chunk)
    if not size:
        raise InferError(400, "body: empty; send an inference request as JSON")
    return b"".join(chunks)


def install_error_handlers(app: FastAPI) -> None:
    """Answer bad requests with 400 and a message naming the field, never FastAPI's 422 shape."""

    @app.exception_handler(InferError)
    async def _infer_error(_: Request, exc: InferError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(exc.errors())}, status_code=400)


class PrefixRoot:
    """Route a request for the app's own route prefix (``/v2``) to its ``/`` route.

    Serve mounts an app at its route prefix, so ``GET /v2`` arrives with an empty route path,
    which FastAPI answers with a 307 to ``/v2/``; OIP clients expect the metadata directly.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] == root:
            scope = dict(scope, path=root + "/", raw_path=(root + "/").encode())
        await self.app(scope, receive, send)


def make_api(title: str, description: str) -> FastAPI:
    """A FastAPI app with the shared error handlers and prefix-root routing installed."""
    api = FastAPI(title=title, description=description)
    install_error_handlers(api)
    api.add_middleware(PrefixRoot)
    return api
