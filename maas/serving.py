"""Turning ``deploy.yaml`` into Ray Serve applications: the serve config and live deploys.

``maas serve-config deploy.yaml`` prints :func:`serve_config` (the file ``serve deploy`` and
KubeRay's ``serveConfigV2`` take), whose replicas load the registry's ``production`` version;
the pipeline deploys the same apps with :func:`deploy_model`, pinned to the production version
it has just resolved (a changed pin is what makes Serve roll the replicas).
"""

from __future__ import annotations

from typing import Any

from maas.config import DeployConfig, ModelConfig

SERVER_APP = "maas"
SERVER_ROUTE = "/v2"
MODEL_APP_PREFIX = "model-"  # serve_apps.server finds model apps by this prefix


def model_app_name(model_name: str) -> str:
    return f"{MODEL_APP_PREFIX}{model_name}"


def model_route(model_name: str) -> str:
    return f"/v2/models/{model_name}"


def base_url(cfg: DeployConfig) -> str:
    host = cfg.cluster.http_host
    # 0.0.0.0 binds every interface; clients on this machine still reach it on loopback.
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{cfg.cluster.http_port}"


def inference_args(cfg: DeployConfig, model: ModelConfig, version: int | None) -> dict[str, Any]:
    """The ``serve_apps.inference`` args for ``model``: ``version`` pinned, or None for the
    registry's ``production`` alias as it is when each replica starts."""
    return {
        "name": model.name,
        # Unexpanded on purpose: '~' resolves on the replica's machine, so the same serve
        # config works from a laptop, a `ray up` head or a KubeRay pod.
        "state_dir": cfg.state_dir,
        "registry_uri": cfg.registry.uri or cfg.tracking.uri,
        "version": version,
        "alias": "production",
        "key_env": cfg.registry.key_env,
        "num_replicas": model.serve.num_replicas,
        "num_cpus": model.serve.cpus_per_replica,
        "ort_threads": model.serve.ort_threads,
        "max_rows": model.serve.max_rows,
    }


def serve_config(cfg: DeployConfig) -> dict[str, Any]:
    """A Serve config (``ServeDeploySchema``) with the server app and one app per model."""
    applications: list[dict[str, Any]] = [{
        "name": SERVER_APP,
        "route_prefix": SERVER_ROUTE,
        "import_path": "serve_apps.server:build_app",
        "args": {},
    }]
    for model in cfg.models:
        applications.append({
            "name": model_app_name(model.name),
            "route_prefix": model_route(model.name),
            "import_path": "serve_apps.inference:build_app",
            "args": inference_args(cfg, model, version=None),
        })
    # No http_options: the proxy's bind address belongs to the cluster (`maas up` on a laptop,
    # KubeRay in a pod), and Serve ignores new ones once it is running anyway.
    return {"applications": applications}


def deploy_model(cfg: DeployConfig, model: ModelConfig, version: int) -> str:
    """Deploy (or roll to) ``version`` of ``model`` and wait until it serves; return its URL."""
    from ray import serve

    from serve_apps import inference, server

    # No-op when Serve already runs (e.g. started by `maas up`) with these options.
    serve.start(proxy_location="HeadOnly",
                http_options={"host": cfg.cluster.http_host, "port": cfg.cluster.http_port})
    serve.run(server.build_app({}), name=SERVER_APP, route_prefix=SERVER_ROUTE)
    serve.run(inference.build_app(inference_args(cfg, model, version)),
              name=model_app_name(model.name), route_prefix=model_route(model.name))
    return f"{base_url(cfg)}{model_route(model.name)}/infer"
