"""Server-level Open Inference Protocol routes, mounted at ``/v2``.

    GET /v2/health/live    GET /v2/health/ready    GET /v2

Model routes live in per-model apps at ``/v2/models/<name>`` (serve_apps.inference); Serve
routes by longest prefix, so this app only sees ``/v2/models/...`` for models that are not
deployed, and answers those with 404.
"""

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

import maas
from maas.oip import ErrorBody
from maas.serving import MODEL_APP_PREFIX
from serve_apps.http import make_api


class ServerArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_cpus: float = 0.1


api = make_api(title="maas", description="Open Inference Protocol v2 server endpoints")


def _model_apps() -> dict[str, str]:
    """Model name -> Serve application status, for every model app on the cluster."""
    status = serve.status()
    return {name.removeprefix(MODEL_APP_PREFIX): app.status.value
            for name, app in status.applications.items() if name.startswith(MODEL_APP_PREFIX)}


@serve.deployment
@serve.ingress(api)
class Server:
    @api.get("/health/live")
    def live(self) -> dict[str, bool]:
        return {"live": True}

    # Sync: serve.status() is a blocking call to the Serve controller.
    @api.get("/health/ready")
    def ready(self) -> JSONResponse:
        models = _model_apps()
        ready = bool(models) and all(state == "RUNNING" for state in models.values())
        return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)

    @api.get("/")
    def metadata(self) -> dict[str, object]:
        return {"name": "maas", "version": maas.__version__, "extensions": []}

    @api.api_route("/models/{name}", methods=["GET", "POST"], responses={404: {"model": ErrorBody}})
    @api.api_route("/models/{name}/{rest:path}", methods=["GET", "POST"],
                   responses={404: {"model": ErrorBody}})
    def unknown_model(self, name: str) -> JSONResponse:
        known = sorted(_model_apps())
        return JSONResponse({"error": f"unknown model {name!r}; served models: {known}"},
                            status_code=404)


def build_app(args: dict) -> Application:
    """Serve entry point: ``serve_apps.server:build_app`` with :class:`ServerArgs`."""
    parsed = ServerArgs.model_validate(args)
    return Server.options(name="maas-server",
                          ray_actor_options={"num_cpus": parsed.num_cpus}).bind()
