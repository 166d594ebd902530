"""The Ray Serve config of a ``deploy.yaml``: what ``serve deploy`` and KubeRay's
``serveConfigV2`` take.

    maas serve-config deploy.yaml > serve.yaml && serve deploy serve.yaml

The server app, one app per model and, when a text-embedding model is configured, the
OpenAI-compatible app; each with its typed args (:mod:`maas.app_args`) as plain YAML. Model
replicas load the registry's ``production`` version and re-read the aliases themselves, so a
promotion needs no redeploy.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from maas.app_args import (chat_models, embedding_models, embeddings_args, inference_args,
                           is_chat_model, server_args)
from maas.config import DeployConfig
from maas.routes import (OPENAI_APP, OPENAI_ROUTE, SERVER_APP, SERVER_ROUTE, model_app_name,
                         model_route)


def _application(name: str, route: str, module: str, args: BaseModel) -> dict[str, Any]:
    return {"name": name, "route_prefix": route, "import_path": f"serve_apps.{module}:build_app",
            "args": args.model_dump(mode="json")}


def serve_config(cfg: DeployConfig) -> dict[str, Any]:
    """The config document (``ServeDeploySchema``): the server app and one app per model."""
    applications = [_application(SERVER_APP, SERVER_ROUTE, "server", server_args(cfg))]
    applications += [_application(model_app_name(m.name), model_route(m.name),
                                  "llm" if is_chat_model(m) else "inference",
                                  inference_args(cfg, m)) for m in cfg.models]
    if embedding_models(cfg) or chat_models(cfg):
        applications.append(_application(OPENAI_APP, OPENAI_ROUTE, "embeddings",
                                         embeddings_args(cfg)))
    # No http_options: the proxy's bind address belongs to the cluster (`maas up` on a laptop,
    # KubeRay in a pod), and Serve ignores new ones once it is running anyway.
    return {"applications": applications}
