"""Model versions in the MLflow Model Registry, with artifacts verified on every load.

``versions`` says what a version is (its tags, the errors), ``artifacts`` stores and verifies
its files, ``store`` holds :class:`Registry` (register, promote, rollback, read), ``reader``
is what replicas read it with (no MLflow client), and ``promotion`` decides whether a new
version may take ``production``.
"""

from maas.registry.artifacts import ARTIFACT_DIR
from maas.registry.promotion import PromotionDecision, check_promotion
from maas.registry.reader import RegistryReader, RegistryView, registry_view
from maas.registry.store import Registry
from maas.registry.versions import (ALIASES, CANARY, MAX_VERSION, MODEL_FILE, PRODUCTION,
                                    AssetInfo, IntegrityError, ModelNotFound, ModelSummary,
                                    RegistryError, VersionInfo, VersionNotFound, config_hash,
                                    is_version_number, onnx_signature, sha256_bytes)

__all__ = ["ARTIFACT_DIR", "PromotionDecision", "check_promotion", "Registry", "RegistryReader",
           "RegistryView", "registry_view", "ALIASES",
           "CANARY", "MAX_VERSION", "MODEL_FILE", "PRODUCTION", "AssetInfo", "IntegrityError",
           "ModelNotFound", "ModelSummary", "RegistryError", "VersionInfo", "VersionNotFound",
           "config_hash", "is_version_number", "onnx_signature", "sha256_bytes"]
