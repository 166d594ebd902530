"""The infer routes of a model replica as a plain ASGI handler in front of its FastAPI app.

A replica's CPU under many small requests went a quarter to FastAPI's routing, middleware and
dependency solving (py-spy, bench/RESULTS.md), for two routes that read their body by hand
anyway. So ``POST .../infer`` and ``POST .../versions/<v>/infer`` are answered here, before
FastAPI sees them; every other route (metadata, ready, docs) goes on to the FastAPI app, which
also declares the infer routes, for the OpenAPI document. Errors are rendered as the FastAPI
app renders them (serve_apps.http.error_response): the same status, body and headers.
"""

import logging
from typing import Awaitable, Callable, Mapping

from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from maas.errors import MaasError
from serve_apps import REPLICA_LOG
from serve_apps.http import error_response

log = logging.getLogger(REPLICA_LOG)
INFER, VERSIONS = "/infer", "/versions/"
JSON_HEADERS = [(b"content-type", b"application/json")]
# (the request's headers by lower-case name, its ASGI receive, the version in its path)
Answer = Callable[[Mapping[str, str], Receive, "str | None"], Awaitable[bytes]]


def header_map(scope: Scope) -> dict[str, str]:
    """A request's headers by (ASGI's lower-case) name; the first of a repeated one, as
    Starlette's ``Headers.get`` gives it."""
    return {name.decode("latin-1"): value.decode("latin-1")
            for name, value in reversed(scope["headers"])}


def infer_target(route: str) -> tuple[bool, str | None]:
    """Whether ``route`` (the path below the app's prefix) is an infer route, and the version
    it names (None: the production alias, or the canary's share)."""
    if route == INFER:
        return True, None
    if route.startswith(VERSIONS) and route.endswith(INFER):
        version = route[len(VERSIONS):-len(INFER)]
        if version and "/" not in version:
            return True, version
    return False, None


def _spliced(routes: list) -> list:
    """``routes`` with each router included without a prefix (FastAPI's ``include_router``)
    replaced by its own routes, as Serve's route tags read them either way."""
    flat = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None and getattr(getattr(route, "include_context", None), "prefix",
                                         None) == "":
            flat += _spliced(inner.routes)
        else:
            flat.append(route)
    return flat


class InferRouteTag(Route):
    """One of the FastAPI app's infer routes as Serve sees it when it tags a request's metrics
    with its route (every request, by trying each route's ``matches`` in turn): an infer
    request is told by a string test instead of the route's regex and path parameters (~15 µs
    of a replica's time per request at 1 client, py-spy); any other request is matched by the
    FastAPI route itself, so its tag is what it was. Never routes a request: InferFront and the
    FastAPI app do."""

    def __init__(self, route: BaseRoute, versioned: bool):  # no super(): it compiles a regex
        self.route, self.versioned = route, versioned
        self.path: str = getattr(route, "path")
        self.name: str = getattr(route, "name", "")
        self.methods: set[str] | None = getattr(route, "methods", None)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["method"] == "POST":
            is_infer, version = infer_target(scope["path"][len(scope.get("root_path", "")):])
            if is_infer and (version is not None) == self.versioned:
                return Match.FULL, {}
        return self.route.matches(scope)


class InferFront:
    """ASGI app: infer requests to ``answer`` (the JSON body of a 200, or a MaasError),
    everything else to ``app``."""

    def __init__(self, answer: Answer, app: ASGIApp):
        self.answer, self.app = answer, app
        self._routes: list | None = None

    # The FastAPI app's routes and router: Serve matches each request against them to tag
    # its own metrics by route, as it did when the FastAPI app was the replica's app. The
    # infer routes come first: Serve tries the routes in order, and they take nearly every
    # request (the others' paths never match an infer path, so no tag changes). Serve's
    # ingress puts the class's routes in a router included without a prefix, after the docs'
    # routes: spliced in here, or every infer request was first tried against the 9 others.
    @property
    def routes(self) -> list:
        if self._routes is None:
            routes = _spliced(self.app.routes)  # type: ignore[attr-defined]
            first = [r for r in routes if getattr(r, "path", "").endswith(INFER)]
            tags = [InferRouteTag(r, getattr(r, "path") != INFER) for r in first]
            self._routes = tags + [r for r in routes if r not in first]
        return self._routes

    @property
    def router(self) -> object:
        return self.app.router  # type: ignore[attr-defined]

    def add_exception_handler(self, exc_class: type, handler: Callable) -> None:
        # Serve registers its back-pressure errors on an app that has this (FastAPI's).
        self.app.add_exception_handler(exc_class, handler)  # type: ignore[attr-defined]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            is_infer, version = infer_target(scope["path"][len(scope.get("root_path", "")):])
            if is_infer:
                await self._infer(scope, receive, send, version)
                return
        await self.app(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send,
                     version: str | None) -> None:
        try:
            body, status = await self.answer(header_map(scope), receive, version), 200
        except ClientDisconnect:  # gone before its body arrived: nobody to answer
            return
        except MaasError as exc:  # rendered as the FastAPI app renders it
            await error_response(exc)(scope, receive, send)
            return
        except Exception:  # a bug, not the client's fault: logged, and a 500 that says so
            log.exception("infer request failed")
            body, status = b'{"error":"internal error: see the replica log"}', 500
        await send({"type": "http.response.start", "status": status,
                    "headers": JSON_HEADERS + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
