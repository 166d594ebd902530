"""``access``, ``registry`` and ``models[].agreement`` / ``models[].catalog``: who may use a
model, on which terms, and where its versions are kept."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from maas.config.base import ENV_NAME_PATTERN, StrictModel


class DataUsageConfig(StrictModel):
    """What the operator may do with request payloads sent under a model's agreement."""

    log_payloads: bool = Field(
        False, description="whether request payloads may be written to the payload log")
    retention_days: int = Field(30, ge=1, le=3650, description="logged payloads are deleted "
                                                               "after this many days")
    redaction: Literal["none", "digest", "mask_pii"] = Field(
        "none", description="none: inputs as sent; digest: only a sha256 of each input; "
                            "mask_pii: e-mail addresses, phone and card numbers in text inputs "
                            "replaced by placeholders")


class TrainingDataConfig(StrictModel):
    """What a tenant's training data (files uploaded to fine-tune this model) is used for. It
    trains only that tenant's own fine-tuned models, which only its keys can call: that is
    how maas works, whatever is set here."""

    fine_tuning: bool = Field(True, description="whether tenants may fine-tune this model on "
                                                "their data (false: the license forbids "
                                                "derivatives)")
    retention_days: int = Field(30, ge=1, le=3650,
                                description="files a job tunes this model on are deleted, bytes "
                                            "and all, this many days after their upload (or "
                                            "sooner, by fine_tuning.retention_days)")


class AgreementConfig(StrictModel):
    """A model's terms of use. Tenants must accept the current version before their keys work
    for the model; any change to these fields is a new version, to be accepted again."""

    license: str = Field(min_length=1, max_length=100,
                         description="SPDX license id of the model, or the name of your own")
    allowed_uses: list[str] = Field(min_length=1, description="what the model may be used for")
    prohibited_uses: list[str] = Field(default_factory=list,
                                       description="what it must not be used for")
    data_usage: DataUsageConfig = Field(default_factory=DataUsageConfig,
                                        description="what may be done with request payloads")
    training_data: TrainingDataConfig | None = Field(
        None, description="what tenants' fine-tuning data is used for and how long it is kept; "
                          "unset: fine_tuning.retention_days")
    text: str | None = Field(None, description="the full terms, or where to read them")


class CatalogConfig(StrictModel):
    """What the model catalog (``GET /v2/catalog``, ``maas catalog``) says of a model."""

    description: str = Field("", description="one line for the catalog; empty: the registered "
                                             "version's description")
    price_per_1k_rows: float | None = Field(None, ge=0.0, description="price of 1,000 answered "
                                                                   "rows; unset: none shown")
    price_per_1k_input_tokens: float | None = Field(
        None, ge=0.0, description="LLMs: price of 1,000 prompt tokens (the engine's count); "
                                  "unset: prompt tokens are not priced")
    price_per_1k_output_tokens: float | None = Field(
        None, ge=0.0, description="LLMs: price of 1,000 completion tokens (the engine's "
                                  "count); unset: completion tokens are not priced")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    tags: list[str] = Field(default_factory=list, description="free-form labels for search")


class RegistryConfig(StrictModel):
    """The MLflow Model Registry that holds every version, and how its artifacts are stored."""

    uri: str | None = Field(None, description="MLflow registry URI; unset: the tracking URI")
    encrypt: bool = Field(False, description="AES-256-GCM encrypt ONNX artifacts at rest")
    key_env: str = Field(
        "MAAS_MODEL_KEY",
        description="environment variable holding the base64 32-byte key (never the key itself)")

    @field_validator("key_env")
    @classmethod
    def _env_name(cls, name: str) -> str:
        if not re.fullmatch(ENV_NAME_PATTERN, name):
            raise ValueError("must be the name of an environment variable (letters, digits, '_'), "
                             "not the key itself")
        return name


class AccessConfig(StrictModel):
    """API keys, agreements, rate limits, quotas and usage metering in front of every model."""

    enabled: bool = Field(True, description="false: every route is open (trusted networks only)")
    store: str | None = Field(
        None, description="the access store's URL: sqlite:///PATH (one machine) or "
                          "postgresql+psycopg://user:password@host:port/db (replicas on several "
                          "machines; pip install 'maas[postgres]'); unset: SQLite under "
                          "state_dir (access.db)")
    refresh_s: float = Field(2.0, gt=0.0, le=600.0,
                             description="how often replicas re-read keys and acceptances; a "
                                         "revoked key stops working within this")
    usage_flush_s: float = Field(1.0, gt=0.0, le=60.0,
                                 description="replicas write usage counts this often (and "
                                             "at once for answers that wait for theirs: "
                                             "usage_durable); a crash loses at most this much "
                                             "of what did not wait")
    usage_durable: bool | None = Field(
        None, description="true: answer a request (200) only once its usage is in the access "
                          "store (the answers waiting are written together), so a lost node "
                          "loses no answered request's usage; it costs throughput "
                          "(bench/RESULTS.md). false: written every usage_flush_s after "
                          "answering. Unset: true with a PostgreSQL store (several nodes), "
                          "false with SQLite (one machine)")
    payload_dir: str | None = Field(None, description="payload log folder, for models whose "
                                                      "terms allow it; unset: state_dir/payloads")
    metrics_tenants: bool = Field(
        False, description="tag the ray_maas_requests Prometheus series with tenant names. Off: "
                           "Ray's metrics port answers without auth, so tenant names and "
                           "traffic stay in the access store (`maas usage`, the console)")

    @field_validator("store")
    @classmethod
    def _store_url(cls, url: str | None) -> str | None:
        # Only these two: the store relies on their upsert and migration lock
        # (maas.access.database).
        if url is not None and not re.match(r"(sqlite|postgresql)(\+\w+)?://", url):
            raise ValueError("must be sqlite:///PATH or "
                             "postgresql+psycopg://user:password@host:port/db")
        return url
