"""The server app at the root of the URL space: Open Inference Protocol server routes and the
model catalog under ``/v2``, the API docs, and a home page.

    GET /                   where everything is (HTML for a browser, JSON otherwise)
    GET /docs               Swagger UI of /openapi.json (served from here: no CDN needed)
    GET /openapi.json       every route of every app (serve_apps.openapi)
    GET /v2/health/live     GET /v2/health/ready     GET /v2     GET /v2/catalog

``ready`` is 200 when every model app, and the /v1 app when it is deployed, runs. Model routes
live in per-model apps at ``/v2/models/<name>`` (serve_apps.inference); Serve routes by longest
prefix, so this app only sees ``/v2/models/...`` for models that are not deployed, and answers
those with 404. With ``access`` set, the catalog lists only the models the request's key may
use, and needs a key like every model route; health, metadata and docs stay open.
"""

# No `from __future__ import annotations` in serve apps: FastAPI and Serve's typed builders
# read the real annotation objects.
import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import Application

import maas
from maas.app_args import ServerArgs
from maas.catalog import ModelCard, catalog
from maas.access import KeyRecord
from maas.oip import ErrorBody, InferError
from maas.routes import (MODEL_APP_PREFIX, OIP_ROOT, OPENAI_APP, SERVER_APP, chat_route,
                         embeddings_route, infer_route, model_route)
from serve_apps import console, embeddings, inference, llm
from serve_apps.gate import AccessGate, visible_models
from serve_apps.http import make_api
from serve_apps.lean import lean_runtime_env
from serve_apps.openapi import server_document

CATALOG_CACHE_S = 2.0  # cards take a few registry queries each; clients may poll
NOT_FOUND = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
TENANT_ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 409)}
TENANT = f"{OIP_ROOT}/tenant"
api = make_api(title="maas", description="Open Inference Protocol v2 server endpoints")


def _apps() -> dict[str, str]:
    """Serve application -> status, for the model apps and the /v1 app (blocking: a call to
    the Serve controller)."""
    status = serve.status()
    return {name: app.status.value for name, app in status.applications.items()
            if name.startswith(MODEL_APP_PREFIX) or name == OPENAI_APP}


def _models(apps: dict[str, str]) -> dict[str, str]:
    """Model name -> its app's status, among ``apps``."""
    return {name.removeprefix(MODEL_APP_PREFIX): state for name, state in apps.items()
            if name.startswith(MODEL_APP_PREFIX)}


def openapi_document(args: ServerArgs, own: FastAPI) -> dict:
    """The one OpenAPI document of a server deployed with ``args``: its own routes (``own``:
    this module's ``api``, passed in because Serve pickles the deployment by value, and a
    global read here would be a copy of the app it serves), each model's (OIP, or a chat
    model's generate routes) and /v1's."""
    return server_document(
        own, inference.api, embeddings.api, [e.name for e in args.catalog],
        bool(args.embedding_models or args.chat_models), keys=args.access is not None,
        chat_api=llm.api, chat_models=tuple(args.chat_models))


@serve.deployment
@serve.ingress(api)
class Server:
    def __init__(self, args: ServerArgs):
        self.args = args
        self.digest = args.digest()
        self.registry = args.registry()
        self.gate = AccessGate(args.access) if args.access is not None else None
        self._cards: tuple[float, list[ModelCard]] = (0.0, [])
        # FastAPI serves api.openapi_schema as /openapi.json (and /docs shows it): the routes
        # of every app this server's config deploys.
        api.openapi_schema = openapi_document(args, api)

    @api.get("/", response_model=None)
    def home(self, request: Request) -> JSONResponse | Response:
        """The console for a browser; for anything else, where everything is, as JSON."""
        links = {"docs": "/docs", "openapi": "/openapi.json", "catalog": f"{OIP_ROOT}/catalog",
                 "health": f"{OIP_ROOT}/health/ready", "dashboard": self.args.dashboard_url,
                 "models": {e.name: (f"{model_route(e.name)}/generate"
                                     if e.name in self.args.chat_models else infer_route(e.name))
                            for e in self.args.catalog}}
        if self.args.embedding_models:
            links["openai"] = embeddings_route()
        if self.args.chat_models:
            links["chat"] = chat_route()
        if "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"name": "maas", "version": maas.__version__, **links})
        return console.page()

    @api.get("/console/{name}", include_in_schema=False)
    def console_file(self, name: str) -> Response:
        return console.asset(name)

    @api.get("/console-links", include_in_schema=False)
    def console_links(self) -> dict[str, str | None]:
        """Where the status strip links to (open: no tenant data)."""
        return console.links(self.args.tracking_uri, self.args.dashboard_url)

    @api.get(f"{OIP_ROOT}/health/live")
    def live(self) -> dict[str, bool | str]:
        return {"live": True, "settings": self.digest}

    # Sync: serve.status() is a blocking call to the Serve controller.
    @api.get(f"{OIP_ROOT}/health/ready")
    def ready(self) -> JSONResponse:
        apps = _apps()
        models = _models(apps)
        ready = bool(models) and all(state == "RUNNING" for state in apps.values())
        body = {"ready": ready, "models": models}
        if OPENAI_APP in apps:
            body["embeddings"] = apps[OPENAI_APP]
        return JSONResponse(body, status_code=200 if ready else 503)

    @api.get(OIP_ROOT)
    @api.get(f"{OIP_ROOT}/", include_in_schema=False)
    def metadata(self) -> dict[str, object]:
        return {"name": "maas", "version": maas.__version__, "extensions": []}

    def _all_cards(self) -> list[ModelCard]:
        built, cards = self._cards
        if time.monotonic() - built > CATALOG_CACHE_S:
            store = self.gate.store if self.gate is not None else None
            cards = catalog(self.args.catalog, self.registry, store)
            self._cards = (time.monotonic(), cards)
        return cards

    @api.get(f"{OIP_ROOT}/catalog", response_model=list[ModelCard],
             responses={401: {"model": ErrorBody}})
    async def catalog(self, request: Request) -> list[ModelCard]:
        """A card per model the key may use: signature, versions, metrics, terms, price (per
        1,000 rows; for an LLM per 1,000 input and output tokens, with its context length)."""
        visible = await visible_models(self.gate, request.headers)
        cards = await asyncio.to_thread(self._all_cards)
        return [card for card in cards if visible(card.name)]

    # ---- the signed-in tenant (the console's data; any client may use them) ------------

    async def _tenant(self, request: Request) -> KeyRecord:
        if self.gate is None:
            raise InferError(404, "access is off: there are no tenants (access.enabled)")
        return await self.gate.authenticate(request.headers)

    async def _tenant_call(self, request: Request, view, *args) -> JSONResponse:
        record = await self._tenant(request)
        body = await asyncio.to_thread(view, self.gate.store, record, *args)
        return JSONResponse(body)

    @api.get(TENANT, responses=TENANT_ERRORS)
    async def tenant(self, request: Request) -> JSONResponse:
        """The key this request was sent with and its tenant."""
        return JSONResponse(console.whoami(await self._tenant(request)))

    @api.get(f"{TENANT}/keys", responses=TENANT_ERRORS)
    async def tenant_keys(self, request: Request) -> JSONResponse:
        """The tenant's keys: prefix, scope, limits, created, revoked."""
        return await self._tenant_call(request, console.keys)

    @api.post(f"{TENANT}/keys/{{key_id}}/revoke", responses=TENANT_ERRORS)
    async def tenant_revoke(self, key_id: str, request: Request) -> JSONResponse:
        """Revoke one of the tenant's own keys (this one too, if asked)."""
        record = await self._tenant(request)
        revoked = await asyncio.to_thread(console.revoke, self.gate.store, record, key_id)
        self.gate.known(revoked)
        return JSONResponse(revoked.public())

    @api.get(f"{TENANT}/usage", responses=TENANT_ERRORS)
    async def tenant_usage(self, request: Request, hours: int = 24,
                           bucket: str = "hour") -> JSONResponse:
        """The tenant's usage per hour or day, model and status, with its cost."""
        return await self._tenant_call(request, console.usage, self.args.catalog, hours,
                                       bucket)

    @api.get(f"{TENANT}/agreements", responses=TENANT_ERRORS)
    async def tenant_agreements(self, request: Request) -> JSONResponse:
        """The agreements the tenant has accepted."""
        return await self._tenant_call(request, console.acceptances)

    @api.post(f"{TENANT}/agreements/{{model}}/{{version}}", responses=TENANT_ERRORS)
    async def tenant_accept(self, model: str, version: int, request: Request) -> JSONResponse:
        """Accept ``version`` of ``model``'s agreement for the tenant (the current one)."""
        record = await self._tenant(request)
        return JSONResponse(await asyncio.to_thread(
            console.accept, self.gate.store, record, model, version, record.allows(model)))

    # One route per method: a route of two methods gives both the same operation id.
    @api.get(f"{OIP_ROOT}/models/{{name}}", responses=NOT_FOUND)
    @api.post(f"{OIP_ROOT}/models/{{name}}", responses=NOT_FOUND)
    @api.get(f"{OIP_ROOT}/models/{{name}}/{{rest:path}}", responses=NOT_FOUND)
    @api.post(f"{OIP_ROOT}/models/{{name}}/{{rest:path}}", responses=NOT_FOUND)
    async def unknown_model(self, name: str, request: Request) -> JSONResponse:
        """A model that is not served: 404, naming those that are (that the key may use)."""
        visible = await visible_models(self.gate, request.headers)  # no key: 401, not a list
        apps = await asyncio.to_thread(_apps)
        known = sorted(m for m in _models(apps) if visible(m))
        return JSONResponse({"error": f"unknown model {name!r}; served models: {known}"},
                            status_code=404)

    def __del__(self) -> None:
        gate = getattr(self, "gate", None)
        if gate is not None:
            gate.close()


def build_app(args: ServerArgs) -> Application:
    """Serve entry point: ``serve_apps.server:build_app``; Serve validates the config's
    ``args`` into :class:`maas.app_args.ServerArgs`."""
    # Its requests take milliseconds: a replacement (a redeploy, `maas down`) drains quickly.
    return Server.options(name=SERVER_APP,
                          ray_actor_options={"num_cpus": args.num_cpus,
                                             "runtime_env": lean_runtime_env()},
                          graceful_shutdown_wait_loop_s=0.5,
                          graceful_shutdown_timeout_s=5.0).bind(args)
