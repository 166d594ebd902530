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


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        if error["type"] == "json_invalid":
            problems.append(f"body: not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})")
        elif tuple(error["loc"]) == ("body",):
            problems.append("body: must be a JSON object (send Content-Type: application/json)")
        else:
            problems.append(f"{_field_path(tuple(error['loc']))}: {error['msg']}")
    return "; ".join(problems)


def install_error_handlers(app: FastAPI) -> None:
    """Answer bad requests with 400 and a message naming the field, never FastAPI's 422 shape."""

    @app.exception_handler(InferError)
    async def _infer_error(_: Request, exc: InferError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=400)


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
