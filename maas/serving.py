"""Turning ``deploy.yaml`` into Ray Serve applications: the serve config and live deploys.

``maas serve-config deploy.yaml`` prints :func:`serve_config` (the file ``serve deploy`` and
KubeRay's ``serveConfigV2`` take), whose replicas load the registry's ``production`` version;
the pipeline deploys the same apps with :func:`deploy_model`. Replicas re-read the aliases
themselves, so a promotion needs no redeploy.
"""

from __future__ import annotations

from typing import Any

from maas.config import DeployConfig, ModelConfig

SERVER_APP = "maas"
SERVER_ROUTE = "/v2"
EMBEDDINGS_APP = "maas-openai"  # POST /v1/embeddings, for the text-embedding models
EMBEDDINGS_ROUTE = "/v1"
MODEL_APP_PREFIX = "model-"  # serve_apps.server finds model apps by this prefix


def model_app_name(model_name: str) -> str:
    return f"{MODEL_APP_PREFIX}{model_name}"


def model_route(model_name: str) -> str:
    return f"/v2/models/{model_name}"


def base_url(cfg: DeployConfig) -> str:
    host = cfg.cluster.http_host
    # 0.0.0.0 binds every interface; clients on this machine still reach it on loopback.
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{cfg.cluster.http_port}"


def inference_args(cfg: DeployConfig, model: ModelConfig, version: int | None = None
                   ) -> dict[str, Any]:
    """The ``serve_apps.inference`` args for ``model``. ``version`` None (the default): the
    replicas follow the registry's ``production`` and ``canary`` aliases."""
    serve_cfg = model.serve
    autoscaling = (None if serve_cfg.autoscaling is None
                   else serve_cfg.autoscaling.model_dump(exclude_none=True))
    return {
        **_replica_args(cfg),
        "name": model.name,
        "version": version,
        "num_replicas": serve_cfg.num_replicas,
        "autoscaling": autoscaling,
        "num_cpus": serve_cfg.cpus_per_replica,
        "ort_threads": serve_cfg.ort_threads,
        "max_rows": serve_cfg.max_rows,
        "max_body_bytes": serve_cfg.max_body_bytes,
        "body_timeout_s": serve_cfg.body_timeout_s,
        "max_batch_size": serve_cfg.batching.max_batch_size,
        "batch_wait_ms": serve_cfg.batching.wait_ms,
        "canary_weight": serve_cfg.canary_weight,
        "alias_poll_s": serve_cfg.alias_poll_s,
        "access_log": serve_cfg.access_log,
        "agreement": None if model.agreement is None else model.agreement.model_dump(mode="json"),
    }


def _replica_args(cfg: DeployConfig) -> dict[str, Any]:
    """What every serve app is told (``serve_apps.args.ReplicaArgs``)."""
    return {
        # Unexpanded on purpose: '~' resolves on the replica's machine, so the same serve
        # config works from a laptop, a `ray up` head or a KubeRay pod.
        "state_dir": cfg.state_dir,
        "registry_uri": cfg.registry.uri or cfg.tracking.uri,
        "key_env": cfg.registry.key_env,
        "access": access_args(cfg),
    }


def access_args(cfg: DeployConfig) -> dict[str, Any] | None:
    """The serve apps' ``access`` args (None: access is off, every route is open)."""
    if not cfg.access.enabled:
        return None
    return {"state_dir": cfg.state_dir, "store": cfg.access.store,
            "refresh_s": cfg.access.refresh_s, "usage_flush_s": cfg.access.usage_flush_s,
            "payload_dir": cfg.access.payload_dir}


def server_args(cfg: DeployConfig) -> dict[str, Any]:
    """The ``serve_apps.server`` args: the catalog of every model, and access."""
    from maas.catalog import entries

    return {**_replica_args(cfg), "catalog": [e.model_dump() for e in entries(cfg)]}


def embedding_models(cfg: DeployConfig) -> list[ModelConfig]:
    """The models the OpenAI-compatible embeddings route serves (``source: pretrained``)."""
    return [m for m in cfg.models if m.source == "pretrained"]


def embeddings_args(cfg: DeployConfig) -> dict[str, Any]:
    """The ``serve_apps.embeddings`` args: which models it routes to, and body limits."""
    models = embedding_models(cfg)
    return {**_replica_args(cfg),
            "models": {m.name: m.serve.max_rows for m in models},
            "max_body_bytes": max(m.serve.max_body_bytes for m in models),
            "body_timeout_s": max(m.serve.body_timeout_s for m in models),
            "access_log": any(m.serve.access_log for m in models)}


def serve_config(cfg: DeployConfig) -> dict[str, Any]:
    """A Serve config (``ServeDeploySchema``) with the server app and one app per model."""
    applications: list[dict[str, Any]] = [{
        "name": SERVER_APP,
        "route_prefix": SERVER_ROUTE,
        "import_path": "serve_apps.server:build_app",
        "args": server_args(cfg),
    }]
    for model in cfg.models:
        applications.append({
            "name": model_app_name(model.name),
            "route_prefix": model_route(model.name),
            "import_path": "serve_apps.inference:build_app",
            "args": inference_args(cfg, model),
        })
    if embedding_models(cfg):
        applications.append({
            "name": EMBEDDINGS_APP,
            "route_prefix": EMBEDDINGS_ROUTE,
            "import_path": "serve_apps.embeddings:build_app",
            "args": embeddings_args(cfg),
        })
    # No http_options: the proxy's bind address belongs to the cluster (`maas up` on a laptop,
    # KubeRay in a pod), and Serve ignores new ones once it is running anyway.
    return {"applications": applications}


def _serving(url: str, key: str, expected: str) -> bool:
    """Whether ``url`` answers 200 with ``expected`` under ``key`` (the running app already
    has these settings)."""
    import requests

    try:
        reply = requests.get(url, timeout=5)
        return reply.status_code == 200 and reply.json().get(key) == expected
    except (requests.RequestException, ValueError):
        return False


def deploy_model(cfg: DeployConfig, model: ModelConfig) -> str:
    """Deploy ``model``'s app and wait until it serves; return its infer URL.

    An app already serving these exact settings is left alone: ``serve.run`` would give it a
    new random version and restart every replica, and the replicas follow promotions by
    themselves."""
    from ray import serve

    from serve_apps import embeddings, inference, server

    # No-op when Serve already runs (e.g. started by `maas up`) with these options.
    serve.start(proxy_location="HeadOnly",
                http_options={"host": cfg.cluster.http_host, "port": cfg.cluster.http_port})
    root = base_url(cfg)
    server_settings = server.ServerArgs.model_validate(server_args(cfg))
    if not _serving(f"{root}{SERVER_ROUTE}/health/live", "settings", server_settings.digest()):
        serve.run(server.build_app(server_settings.model_dump()), name=SERVER_APP,
                  route_prefix=SERVER_ROUTE)
    args = inference.InferenceArgs.model_validate(inference_args(cfg, model))
    if not _serving(f"{root}{model_route(model.name)}/ready", "settings", args.digest()):
        serve.run(inference.build_app(args.model_dump()), name=model_app_name(model.name),
                  route_prefix=model_route(model.name))
    if model.source == "pretrained":
        routes = embeddings.EmbeddingsArgs.model_validate(embeddings_args(cfg))
        if not _serving(f"{root}{EMBEDDINGS_ROUTE}/health", "settings", routes.digest()):
            serve.run(embeddings.build_app(routes.model_dump()), name=EMBEDDINGS_APP,
                      route_prefix=EMBEDDINGS_ROUTE)
    return f"{root}{model_route(model.name)}/infer"


def wait_for_version(cfg: DeployConfig, model: ModelConfig, version: int,
                     timeout_s: float | None = None) -> None:
    """Poll the model's ready route until its unversioned URL serves ``version``: replicas
    swap within ``serve.alias_poll_s`` of a promotion."""
    import time

    import requests

    url = f"{base_url(cfg)}{model_route(model.name)}/ready"
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
