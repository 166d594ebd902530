"""Server-level Open Inference Protocol routes and the model catalog, mounted at ``/v2``.

    GET /v2/health/live    GET /v2/health/ready    GET /v2    GET /v2/catalog

``ready`` is 200 when every model app, and the /v1 embeddings app when it is deployed, runs.

Model routes live in per-model apps at ``/v2/models/<name>`` (serve_apps.inference); Serve
routes by longest prefix, so this app only sees ``/v2/models/...`` for models that are not
deployed, and answers those with 404.

With ``access`` set, the catalog lists only the models the request's key may use, and needs a
key like every model route; health and server metadata stay open.
"""

import asyncio
import time

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import Field
from ray import serve
from ray.serve import Application

import maas
from maas.catalog import CatalogEntry, ModelCard, catalog
from maas.oip import ErrorBody
from maas.serving import EMBEDDINGS_APP, MODEL_APP_PREFIX
from serve_apps.args import ReplicaArgs
from serve_apps.gate import AccessGate
from serve_apps.http import make_api

CATALOG_CACHE_S = 2.0  # cards take a few registry queries each; clients may poll


class ServerArgs(ReplicaArgs):
    state_dir: str = "~/.maas"
    num_cpus: float = 0.1
    catalog: list[CatalogEntry] = Field(default_factory=list)


api = make_api(title="maas", description="Open Inference Protocol v2 server endpoints")


def _model_apps(apps: dict[str, str] | None = None) -> dict[str, str]:
    """Model name -> Serve application status, for every model app on the cluster (among
    ``apps``, when given: what :func:`_maas_apps` returned)."""
    apps = _maas_apps() if apps is None else apps
    return {name.removeprefix(MODEL_APP_PREFIX): state for name, state in apps.items()
            if name.startswith(MODEL_APP_PREFIX)}


def _maas_apps() -> dict[str, str]:
    """Serve application -> status, for the model apps and the /v1 embeddings app."""
    status = serve.status()
    return {name: app.status.value for name, app in status.applications.items()
            if name.startswith(MODEL_APP_PREFIX) or name == EMBEDDINGS_APP}


@serve.deployment
@serve.ingress(api)
class Server:
    def __init__(self, args: ServerArgs):
        self.args = args
        self.digest = args.digest()
        self.registry = args.registry()
        self.gate = AccessGate(args.access) if args.access is not None else None
        self._cards: tuple[float, list[ModelCard]] = (0.0, [])

    @api.get("/health/live")
    def live(self) -> dict[str, bool | str]:
        return {"live": True, "settings": self.digest}

    # Sync: serve.status() is a blocking call to the Serve controller.
    @api.get("/health/ready")
    def ready(self) -> JSONResponse:
        apps = _maas_apps()
        models = _model_apps(apps)
        ready = bool(models) and all(state == "RUNNING" for state in apps.values())
        body = {"ready": ready, "models": models}
        if EMBEDDINGS_APP in apps:
            body["embeddings"] = apps[EMBEDDINGS_APP]
        return JSONResponse(body, status_code=200 if ready else 503)

    @api.get("/")
    def metadata(self) -> dict[str, object]:
        return {"name": "maas", "version": maas.__version__, "extensions": []}

    def _all_cards(self) -> list[ModelCard]:
        built, cards = self._cards
        if time.monotonic() - built > CATALOG_CACHE_S:
            store = self.gate.store if self.gate is not None else None
            cards = catalog(self.args.catalog, self.registry, store)
            self._cards = (time.monotonic(), cards)
        return cards

    @api.get("/catalog", response_model=list[ModelCard],
             responses={401: {"model": ErrorBody}})
    async def catalog(self, request: Request) -> list[ModelCard]:
        """A card per model the key may use: signature, versions, metrics, terms, price."""
        visible = await self._visible(request)
        cards = await asyncio.to_thread(self._all_cards)
        return [card for card in cards if visible(card.name)]

    async def _visible(self, request: Request):
        if self.gate is None:
            return lambda name: True
        return (await self.gate.authenticate(request.headers)).allows

    @api.api_route("/models/{name}", methods=["GET", "POST"],
                   responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    @api.api_route("/models/{name}/{rest:path}", methods=["GET", "POST"],
                   responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    async def unknown_model(self, name: str, request: Request) -> JSONResponse:
        visible = await self._visible(request)  # no key: 401, not a list of what is served
        apps = await asyncio.to_thread(_model_apps)
        known = sorted(m for m in apps if visible(m))
        return JSONResponse({"error": f"unknown model {name!r}; served models: {known}"},
                            status_code=404)

    def __del__(self) -> None:
        gate = getattr(self, "gate", None)
        if gate is not None:
            gate.close()


def build_app(args: dict) -> Application:
    """Serve entry point: ``serve_apps.server:build_app`` with :class:`ServerArgs`."""
    parsed = ServerArgs.model_validate(args)
    return Server.options(name="maas-server",
                          ray_actor_options={"num_cpus": parsed.num_cpus}).bind(parsed)
