"""Deploying a model's apps on the connected cluster, and waiting until they serve.

    python -m jobs.pipeline deploy.yaml     # stage 3 calls deploy_model for every model

The same apps and typed args as ``maas serve-config`` (maas.serve_config), deployed one model at
a time with ``serve.run``. An app already serving the same settings is left alone: ``serve.run``
would give it a new random version and restart every replica, and the replicas follow
promotions by themselves.
"""

import time

import requests
from ray import serve

from maas.app_args import embeddings_args, inference_args, is_chat_model, server_args
from maas.config import DeployConfig, ModelConfig
from maas.routes import (LEGACY_SERVER_APP, OIP_ROOT, OPENAI_APP, OPENAI_ROUTE, SERVER_APP,
                         SERVER_ROUTE, chat_route, infer_route, model_app_name, model_route)
from serve_apps import embeddings, inference, llm, server


def _serving(url: str, key: str, expected: str) -> bool:
    """Whether ``url`` answers 200 with ``expected`` under ``key`` (the running app already
    has these settings)."""
    try:
        reply = requests.get(url, timeout=5)
        return reply.status_code == 200 and reply.json().get(key) == expected
    except (requests.RequestException, ValueError):
        return False


def deploy_model(cfg: DeployConfig, model: ModelConfig) -> str:
    """Deploy the server app, ``model``'s app and (for an embedder or a chat model) the /v1
    app where they do not already serve these settings; wait until they do; return the URL
    the model answers at (its infer route; a chat model's chat completions)."""
    # No-op when Serve already runs (e.g. started by `maas up`) with these options.
    serve.start(proxy_location="HeadOnly",
                http_options={"host": cfg.cluster.http_host, "port": cfg.cluster.http_port})
    root = cfg.cluster.base_url
    if LEGACY_SERVER_APP in serve.status().applications:
        serve.delete(LEGACY_SERVER_APP)  # the server app before it moved to "/"
    settings = server_args(cfg)
    if not _serving(f"{root}{OIP_ROOT}/health/live", "settings", settings.digest()):
        serve.run(server.build_app(settings), name=SERVER_APP, route_prefix=SERVER_ROUTE)
    args = inference_args(cfg, model)
    if not _serving(f"{root}{model_route(model.name)}/ready", "settings", args.digest()):
        app = llm if is_chat_model(model) else inference  # a chat LLM: the generation engine
        serve.run(app.build_app(args), name=model_app_name(model.name),
                  route_prefix=model_route(model.name))
    if model.source == "pretrained":
        routes = embeddings_args(cfg)
        if not _serving(f"{root}{OPENAI_ROUTE}/health", "settings", routes.digest()):
            serve.run(embeddings.build_app(routes), name=OPENAI_APP, route_prefix=OPENAI_ROUTE)
    return f"{root}{chat_route() if is_chat_model(model) else infer_route(model.name)}"


def deploy_tuned(cfg: DeployConfig, model: ModelConfig, owner: str, base: str) -> None:
    """A tenant's fine-tuned chat model as an app of its own: only ``owner``'s keys, scoped to
    ``base``, may use it, under ``base``'s agreement (jobs.finetune_service)."""
    serve.start(proxy_location="HeadOnly",
                http_options={"host": cfg.cluster.http_host, "port": cfg.cluster.http_port})
    args = inference_args(cfg, model).model_copy(update={"owner": owner, "base": base})
    serve.run(llm.build_app(args), name=model_app_name(model.name),
              route_prefix=model_route(model.name))


def wait_for_version(cfg: DeployConfig, model: ModelConfig, version: int,
                     timeout_s: float | None = None) -> None:
    """Poll the model's ready route until its unversioned URL serves ``version``: replicas
    swap within ``serve.alias_poll_s`` of a promotion."""
    url = f"{cfg.cluster.base_url}{model_route(model.name)}/ready"
    deadline = time.monotonic() + (timeout_s or 30.0 + 5 * model.serve.alias_poll_s)
    seen = None
    while time.monotonic() < deadline:
        try:
            reply = requests.get(url, timeout=10)
            seen = reply.json().get("version") if reply.status_code == 200 else reply.status_code
        except (requests.RequestException, ValueError) as exc:
            seen = type(exc).__name__
        if seen == str(version):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} still answers {seen!r}, not version {version}, after the "
                       f"replicas' alias poll; see the replica logs in the Ray dashboard")
