"""The typed schema of ``deploy.yaml``, loaded once and passed down to every stage.

    maas validate deploy.yaml

Every section is a pydantic model with ``extra="forbid"``: an unknown key is an error, never
silently ignored, and every field has a description (``docs/reference/configuration.md`` is
generated from them). :func:`load_config` reports *all* problems at once, each naming its key
path, the value seen and what is allowed. One module per part of a model's life:
``train`` (data, architecture, training), ``optimize`` (export, variants, pretrained),
``llm`` (a pretrained language model's gate),
``serve`` (serving, promotion), ``govern`` (access, registry, agreements, catalog),
``deploy`` (the whole file), ``load`` (reading it).
"""

from maas.config.base import (ENV_NAME_PATTERN, MODEL_NAME_PATTERN, TENANT_PATTERN, StrictModel,
                              access_store_uri, config_relative, expand_state_dir, sqlite_uri)
from maas.config.deploy import ClusterConfig, DeployConfig, ModelConfig, TrackingConfig
from maas.config.govern import (AccessConfig, AgreementConfig, CatalogConfig, DataUsageConfig,
                                RegistryConfig)
from maas.config.llm import LLM_VARIANTS, ChatConfig
from maas.config.load import ConfigError, load_config, parse_config
from maas.config.optimize import (PRETRAINED_VARIANTS, TRAINED_VARIANTS, DistillConfig,
                                  ExportConfig, OptimizeConfig, PretrainedConfig, PruneConfig,
                                  QuantizeConfig, SelectConfig, VariantName)
from maas.config.serve import AutoscalingConfig, BatchingConfig, PromotionConfig, ServeConfig
from maas.config.train import (DATA_FILE_SUFFIXES, DataConfig, EarlyStoppingConfig,
                               ModelArchConfig, ScheduleConfig, SyntheticConfig, TrainConfig)

__all__ = [
    "ENV_NAME_PATTERN", "MODEL_NAME_PATTERN", "TENANT_PATTERN", "StrictModel",
    "access_store_uri", "config_relative", "expand_state_dir", "sqlite_uri",
    "ClusterConfig", "DeployConfig", "ModelConfig", "TrackingConfig",
    "AccessConfig", "AgreementConfig", "CatalogConfig", "DataUsageConfig", "RegistryConfig",
    "LLM_VARIANTS", "ChatConfig", "ConfigError", "load_config", "parse_config",
    "PRETRAINED_VARIANTS", "TRAINED_VARIANTS", "DistillConfig", "ExportConfig", "OptimizeConfig", "PretrainedConfig",
    "PruneConfig", "QuantizeConfig", "SelectConfig", "VariantName",
    "AutoscalingConfig", "BatchingConfig", "PromotionConfig", "ServeConfig",
    "DATA_FILE_SUFFIXES", "DataConfig", "EarlyStoppingConfig", "ModelArchConfig",
    "ScheduleConfig", "SyntheticConfig", "TrainConfig",
]
