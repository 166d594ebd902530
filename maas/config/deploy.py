"""The whole of ``deploy.yaml``: the cluster, tracking, and the models with every section."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from maas.config.base import (MODEL_NAME_PATTERN, StrictModel, access_store_uri,
                              expand_state_dir, sqlite_uri)
from maas.config.finetune import FinetuneConfig, FineTuningConfig
from maas.config.govern import AccessConfig, AgreementConfig, CatalogConfig, RegistryConfig
from maas.config.llm import LLM_VARIANTS
from maas.config.optimize import (PRETRAINED_VARIANTS, TRAINED_VARIANTS, ExportConfig,
                                  OptimizeConfig, PretrainedConfig)
from maas.config.serve import PromotionConfig, ServeConfig
from maas.config.train import DataConfig, ModelArchConfig, TrainConfig


# Names a shared cache of built LLMs; wins over cache_dir (as RAY_ADDRESS over cluster.address).
CACHE_ENV = "MAAS_CACHE_DIR"


class ClusterConfig(StrictModel):
    """Where Ray runs. ``RAY_ADDRESS`` in the environment wins over ``address``."""

    address: str | None = Field(
        None, description="Ray cluster to join, e.g. 10.0.0.5:6379; unset: a local head")
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local head (maas up / embedded); unset: all cores")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the local head; unset: detected")
    dashboard_host: str = Field("127.0.0.1", description="Ray dashboard bind address")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Ray dashboard port")
    metrics_port: int = Field(8090, ge=1, le=65535, description="Prometheus metrics export port")
    http_host: str = Field("127.0.0.1", description="Ray Serve HTTP proxy bind address")
    http_port: int = Field(8000, ge=1, le=65535, description="Ray Serve HTTP port")
    serve_ingress: Literal["haproxy", "python"] = Field(
        "haproxy", description="haproxy: HAProxy routes HTTP straight to the replicas, with "
                               "Serve's throughput settings (measured ~4x the python proxy's "
                               "req/s here); python: Serve's default proxy actor")
    haproxy_threads: int = Field(
        1, ge=1, le=64,
        description="HAProxy's threads (Serve's default is 4): on this 2-core machine 1 "
                    "served ~15% more small requests with a shorter tail, as HAProxy's "
                    "threads no longer compete with the replicas; about 1 per 8 cores of the "
                    "head is plenty")
    haproxy_drain_s: float = Field(
        2.0, ge=0, le=600,
        description="how long a replica being stopped (a delete, a redeploy, a scale-down) "
                    "keeps taking requests behind HAProxy; Serve's default, 30 s, waits for "
                    "an outside load balancer to let it go, while the HAProxy that Serve "
                    "runs on the head is told within a second (deleting an app took 30.5 s "
                    "here, every time); raise it when a load balancer of yours sits in front")

    @property
    def base_url(self) -> str:
        """Where clients on this machine reach Serve (0.0.0.0 binds every interface; a
        client still connects to loopback)."""
        host = "127.0.0.1" if self.http_host == "0.0.0.0" else self.http_host
        return f"http://{host}:{self.http_port}"

    @property
    def dashboard_url(self) -> str:
        host = "127.0.0.1" if self.dashboard_host == "0.0.0.0" else self.dashboard_host
        return f"http://{host}:{self.dashboard_port}"


class TrackingConfig(StrictModel):
    """MLflow tracking. The default is a SQLite file under ``state_dir``."""

    uri: str | None = Field(None, description="MLflow tracking URI; unset: sqlite under state_dir")
    experiment: str = Field("maas", min_length=1, description="MLflow experiment of every run")


class ModelConfig(StrictModel):
    """One model's whole life: its data, training, export, variants, serving and terms."""

    name: str = Field(description="the model's name: in URLs (/v2/models/<name>), the registry "
                                  "and Serve app names")

    @field_validator("name")
    @classmethod
    def _url_safe_name(cls, name: str) -> str:
        if not re.fullmatch(MODEL_NAME_PATTERN, name):
            raise ValueError(
                "must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or "
                "digit (it becomes part of the URL /v2/models/<name>/infer)")
        return name
    data: DataConfig = Field(default_factory=DataConfig, description="source: train only")
    model: ModelArchConfig = Field(default_factory=ModelArchConfig,
                                   description="source: train only: the network")
    train: TrainConfig = Field(default_factory=TrainConfig, description="source: train only")
    export: ExportConfig = Field(default_factory=ExportConfig, description="the ONNX export")
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig,
                                     description="compressed variants and the pick")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="its Ray Serve app")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig,
                                       description="when a new version takes live traffic")
    agreement: AgreementConfig | None = Field(
        None, description="terms tenants must accept; unset: any key scoped to the model works")
    catalog: CatalogConfig = Field(default_factory=CatalogConfig,
                                   description="what the catalog shows of it")
    source: Literal["train", "pretrained"] = Field(
        "train", description="train: data -> Ray Train -> ONNX; pretrained: the `pretrained` "
                             "model exported as it is (needs the text extra; a language "
                             "model, the llm extra)")
    pretrained: PretrainedConfig | None = Field(None, description="source: pretrained only")
    finetune: FinetuneConfig | None = Field(
        None, description="pretrained.task chat only: tune the pretrained model on chat "
                          "examples first; the base is registered as this model's first "
                          "version, the tuned one promoted over it by finetune.gate")

    @model_validator(mode="after")
    def _source_has_its_sections(self) -> ModelConfig:
        if self.finetune is not None and (self.pretrained is None
                                          or self.pretrained.task != "chat"):
            raise ValueError("finetune: tunes a pretrained chat model; it needs source: "
                             "pretrained and pretrained.task: chat")
        if self.source == "train":
            if self.pretrained is not None:
                raise ValueError("pretrained: only used with source: pretrained; remove it, or "
                                 "set source: pretrained")
            return self
        if self.pretrained is None:
            raise ValueError("pretrained: required with source: pretrained (at least "
                             "`pretrained: {model: <directory or package>}`)")
        unused = sorted({"data", "model", "train"} & self.model_fields_set)
        if unused:
            raise ValueError(f"{', '.join(unused)}: not used with source: pretrained (nothing is "
                             f"trained); remove them")
        chat = self.pretrained.task == "chat"
        allowed = LLM_VARIANTS if chat else PRETRAINED_VARIANTS
        wrong = [v for v in self.optimize.variants if v not in allowed]
        if wrong:
            what = "pretrained.task: chat" if chat else "source: pretrained (an embedder)"
            raise ValueError(f"optimize.variants: {wrong} cannot be built with {what}; "
                             f"use {list(allowed)}")
        if self.promotion.min_accuracy is not None:
            gate = "pretrained.chat" if chat else "pretrained.min_cosine"
            raise ValueError(f"promotion.min_accuracy: a pretrained model has no held-out "
                             f"accuracy; its promotion check is {gate}")
        return self

    @model_validator(mode="after")
    def _variants_fit_the_model(self) -> ModelConfig:
        if self.source == "pretrained":
            return self
        if self.promotion.min_accuracy is not None and self.train.task != "classification":
            raise ValueError("promotion.min_accuracy: accuracy needs train.loss: cross_entropy; "
                             "check regressors with promotion.max_regression")
        wrong = [v for v in self.optimize.variants if v not in TRAINED_VARIANTS]
        if wrong:
            raise ValueError(f"optimize.variants: {wrong} are built for a pretrained language "
                             f"model (pretrained.task: chat); with source: train, use "
                             f"{list(TRAINED_VARIANTS)}")
        if self.optimize.variants and self.train.task != "classification":
            raise ValueError("optimize.variants: variants are ranked by accuracy, which needs "
                             "train.loss: cross_entropy")
        if "prune_structured" in self.optimize.variants and self.model.kind != "mlp":
            raise ValueError("optimize.variants: prune_structured removes MLP neurons; "
                             f"model.kind {self.model.kind!r} is not supported, use prune_l1")
        return self


class DeployConfig(StrictModel):
    """The whole of ``deploy.yaml``."""

    state_dir: str = Field("~/.maas", min_length=1,
                           description="Ray Train runs, the MLflow database and its artifacts, "
                                       "the access store; '~' expands where it is read")
    cache_dir: str | None = Field(
        None, min_length=1,
        description="built LLMs (converted checkpoints and ONNX variants, each keyed by its "
                    "source file's sha256), shareable by any number of state dirs; unset: "
                    f"state_dir/cache. {CACHE_ENV} in the environment wins")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="where Ray runs")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow runs")
    registry: RegistryConfig = Field(default_factory=RegistryConfig,
                                     description="the MLflow Model Registry")
    access: AccessConfig = Field(default_factory=AccessConfig,
                                 description="keys, agreements, limits and metering")
    models: list[ModelConfig] = Field(min_length=1, description="every model, by name")
    fine_tuning: FineTuningConfig = Field(
        default_factory=FineTuningConfig,
        description="tenants' own fine-tunes of chat models over /v1 (OpenAI's API)")

    @model_validator(mode="after")
    def _unique_names(self) -> DeployConfig:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"models: name {model.name!r} appears twice; names must be unique")
            seen.add(model.name)
        chat = {m.name for m in self.models
                if m.pretrained is not None and m.pretrained.task == "chat"}
        wrong = [name for name in self.fine_tuning.models if name not in chat]
        if wrong:
            raise ValueError(f"fine_tuning.models: {wrong} are not chat models here (pretrained."
                             f"task: chat); chat models: {sorted(chat)}")
        return self

    @property
    def state_path(self) -> Path:
        """``state_dir`` with ``~`` expanded, resolved on the machine that reads it."""
        return expand_state_dir(self.state_dir)

    @property
    def cache_path(self) -> Path:
        """Where built LLMs are kept: ``$MAAS_CACHE_DIR``, else ``cache_dir``, else
        ``state_dir/cache`` (read where it is called, like ``state_path``)."""
        chosen = os.environ.get(CACHE_ENV) or self.cache_dir
        return expand_state_dir(chosen) if chosen else self.state_path / "cache"

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or sqlite_uri(self.state_path)

    @property
    def registry_uri(self) -> str:
        return self.registry.uri or self.tracking_uri

    @property
    def access_store(self) -> str:
        return access_store_uri(self.access.store, self.state_dir)

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.name == name:
                return model
        known = ", ".join(m.name for m in self.models)
        raise KeyError(f"no model named {name!r} in the config; known models: {known}")
