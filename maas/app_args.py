"""The typed arguments of every serve app, and the one function per app that builds them from
``deploy.yaml``.

The serve config (``maas serve-config``, KubeRay's ``serveConfigV2``) carries these as each
application's ``args``; Serve validates them into the builder's annotated type
(``build_app(args: InferenceArgs)``), and the pipeline passes the same objects directly. A
model's ``serve`` section travels as it is written in deploy.yaml: nothing is renamed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_serializer

import maas
from maas.catalog import CatalogEntry, entries
from maas.config import (ENV_NAME_PATTERN, AgreementConfig, DeployConfig, ModelConfig,
                         ServeConfig, access_store_uri, expand_state_dir, sqlite_uri)
from maas.registry.reader import RegistryView, registry_view
from maas.stores import is_server_database


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccessArgs(Args):
    """The ``access`` section as the serve apps receive it (null: access is off)."""

    state_dir: str = Field(description="the maas state directory; '~' is expanded on the replica")
    store: str | None = Field(None, description="SQLAlchemy URL; null: sqlite under state_dir")
    refresh_s: float = Field(2.0, gt=0, description="access.refresh_s")
    usage_flush_s: float = Field(1.0, gt=0, description="access.usage_flush_s")
    usage_durable: bool = Field(False, description="access.usage_durable, resolved")
    payload_dir: str | None = Field(None, description="access.payload_dir")
    metrics_tenants: bool = Field(False, description="access.metrics_tenants")

    def url(self) -> str:
        return access_store_uri(self.store, self.state_dir)

    def payload_folder(self) -> Path:
        if self.payload_dir:
            return expand_state_dir(self.payload_dir)
        return expand_state_dir(self.state_dir) / "payloads"


class ReplicaArgs(Args):
    """What every serve app is told: where the state and the registry are, and access."""

    state_dir: str = Field(description="the maas state directory; '~' is expanded on the replica")
    registry_uri: str | None = Field(
        None, description="MLflow registry URI; null: the SQLite database under state_dir")
    key_env: str = Field("MAAS_MODEL_KEY", pattern=ENV_NAME_PATTERN,
                         description="environment variable with the key of encrypted models")
    access: AccessArgs | None = Field(None, description="null: no keys needed (access off)")

    def registry(self) -> RegistryView:
        """What a replica reads versions with (no MLflow client for a database registry)."""
        return registry_view(self.registry_uri or sqlite_uri(expand_state_dir(self.state_dir)),
                             self.key_env)

    def digest(self) -> str:
        """These settings and this maas release, hashed: what a deploy compares to decide
        whether the running replicas can stay (serve_apps.deploy)."""
        text = f"{maas.__version__}\n{self.model_dump_json()}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class InferenceArgs(ReplicaArgs):
    """``serve_apps.inference``: one model's Open Inference Protocol app."""

    name: str = Field(description="the model's name")
    version: int | None = Field(
        None, ge=1, description="pin the unversioned routes to this version; null: follow aliases")
    serve: ServeConfig = Field(default_factory=ServeConfig,
                               description="the model's serve section, as in deploy.yaml")
    agreement: AgreementConfig | None = Field(None, description="the model's terms of use")
    owner: str | None = Field(None, description="a tenant's fine-tuned model: only that "
                                                "tenant's keys may use it; others get 404")
    base: str | None = Field(None, description="a fine-tuned model's base model: keys need it "
                                               "in scope, and its agreement accepted")


class ServerArgs(ReplicaArgs):
    """``serve_apps.server``: health, metadata, the catalog and the API docs."""

    state_dir: str = Field("~/.maas", description="the maas state directory")
    num_cpus: float = Field(0.1, gt=0, description="CPUs Ray reserves for its replica")
    catalog: list[CatalogEntry] = Field(default_factory=list,
                                        description="every model's catalog section")
    embedding_models: list[str] = Field(
        default_factory=list, description="the models also served at /v1 (documented there)")
    chat_models: list[str] = Field(
        default_factory=list, description="the chat LLMs: their apps answer Triton's generate "
                                          "extension, and /v1 their chat completions")
    dashboard_url: str | None = Field(None, description="linked from the console")
    tracking_uri: str = Field("", description="MLflow's tracking URI: the console links "
                                              "an http(s) one, and shows how to open another")


class FineTuningArgs(Args):
    """The /v1 app's fine-tuning API (``fine_tuning`` in deploy.yaml)."""

    deploy: DeployConfig = Field(description="the deploy.yaml sections a fine-tuning job runs "
                                             "with; models: the bases tenants may tune")

    @field_serializer("deploy")
    def _as_written(self, deploy: DeployConfig) -> dict:
        # What deploy.yaml set, not every default: a serve config carries these args as YAML,
        # and defaults written out would trip the checks on settings a model does not use.
        return deploy.model_dump(mode="json", exclude_unset=True)


class EmbeddingsArgs(ReplicaArgs):
    """``serve_apps.embeddings``: the OpenAI-compatible ``/v1`` app."""

    models: dict[str, int] = Field(description="embedding model name -> its serve.max_rows")
    chat_models: list[str] = Field(default_factory=list,
                                   description="chat models: /v1/chat/completions and "
                                               "/v1/completions route to their apps")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="larger bodies get 413")
    body_timeout_s: float = Field(10.0, gt=0, description="slower bodies get 408")
    num_cpus: float = Field(0.1, gt=0, description="CPUs Ray reserves for its replica")
    access_log: bool = Field(False, description="Serve's per-request access log lines")
    fine_tuning: FineTuningArgs | None = Field(
        None, description="null: /v1/files and /v1/fine_tuning answer 404")


def access_args(cfg: DeployConfig) -> AccessArgs | None:
    """The serve apps' ``access`` (None: access is off, every route is open)."""
    if not cfg.access.enabled:
        return None
    durable = cfg.access.usage_durable
    if durable is None:  # where nodes can be lost on their own: a store they all share
        durable = is_server_database(cfg.access_store)
    return AccessArgs(state_dir=cfg.state_dir, usage_durable=durable,
                      **cfg.access.model_dump(exclude={"enabled", "usage_durable"}))


def _replica(cfg: DeployConfig) -> dict[str, object]:
    # state_dir unexpanded on purpose: '~' resolves on the replica's machine, so the same
    # serve config works from a laptop, a `ray up` head or a KubeRay pod.
    return {"state_dir": cfg.state_dir, "registry_uri": cfg.registry.uri or cfg.tracking.uri,
            "key_env": cfg.registry.key_env, "access": access_args(cfg)}


def inference_args(cfg: DeployConfig, model: ModelConfig, version: int | None = None
                   ) -> InferenceArgs:
    """``model``'s app; ``version`` None (the default): replicas follow the registry's
    ``production`` and ``canary`` aliases."""
    return InferenceArgs(**_replica(cfg), name=model.name, version=version, serve=model.serve,
                         agreement=model.agreement)


def server_args(cfg: DeployConfig) -> ServerArgs:
    """The server app: the catalog of every model, access, and the dashboard's address."""
    return ServerArgs(**_replica(cfg), catalog=entries(cfg),
                      embedding_models=[m.name for m in embedding_models(cfg)],
                      chat_models=[m.name for m in chat_models(cfg)],
                      dashboard_url=cfg.cluster.dashboard_url, tracking_uri=cfg.tracking_uri)


def embedding_models(cfg: DeployConfig) -> list[ModelConfig]:
    """The models the OpenAI-compatible embeddings route serves (pretrained embedders)."""
    return [m for m in cfg.models if m.source == "pretrained" and not is_chat_model(m)]


def is_chat_model(model: ModelConfig) -> bool:
    """Whether ``model`` is a language model served by serve_apps.llm (``task: chat``)."""
    return model.pretrained is not None and model.pretrained.task == "chat"


def chat_models(cfg: DeployConfig) -> list[ModelConfig]:
    """The models behind /v1/chat/completions and /v1/completions."""
    return [m for m in cfg.models if is_chat_model(m)]


def embeddings_args(cfg: DeployConfig) -> EmbeddingsArgs:
    """The ``/v1`` app: which models it routes to, and the loosest of their body limits."""
    models = [m for m in cfg.models if m.source == "pretrained"]
    return EmbeddingsArgs(**_replica(cfg),
                          models={m.name: m.serve.max_rows for m in embedding_models(cfg)},
                          chat_models=[m.name for m in chat_models(cfg)],
                          max_body_bytes=max(m.serve.max_body_bytes for m in models),
                          body_timeout_s=max(m.serve.body_timeout_s for m in models),
                          access_log=any(m.serve.access_log for m in models),
                          fine_tuning=fine_tuning_args(cfg))


def fine_tuning_args(cfg: DeployConfig) -> FineTuningArgs | None:
    """The fine-tuning API's settings: deploy.yaml with only the models tenants may tune."""
    if not cfg.fine_tuning.models:
        return None
    return FineTuningArgs(deploy=cfg.model_copy(
        update={"models": [cfg.model(name) for name in cfg.fine_tuning.models]}))
