"""The access database's tables: what this release reads and writes.

A new store is created from these definitions; a store written by an older release is brought
up to them by the numbered migrations in ``maas.access.migrations`` (``maas.access.migrate``
applies them): a change here needs a migration there, and tests/unit/test_access_migrations.py
fails when an upgraded store and a new one differ. Columns added after a table first shipped
are nullable or have a server default, so an older replica still running against an upgraded
store keeps writing rows without them.

Integers that a person sets or that count epoch seconds are 64-bit (BigInteger): PostgreSQL's
INTEGER stops at 2**31 - 1, which a token quota per month passes and epoch seconds pass in
2038. (SQLite's integers are 64-bit whatever the declared type.)"""

from __future__ import annotations

import sqlalchemy as sa

meta = sa.MetaData()
tenants = sa.Table(
    "maas_tenants", meta,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False))
api_keys = sa.Table(
    "maas_api_keys", meta,
    sa.Column("key_id", sa.String(12), primary_key=True),
    sa.Column("tenant", sa.String(64), sa.ForeignKey("maas_tenants.name"), nullable=False),
    sa.Column("models", sa.Text, nullable=False),  # JSON list
    sa.Column("rate", sa.Float), sa.Column("burst", sa.Integer),
    sa.Column("quota", sa.BigInteger), sa.Column("quota_period", sa.String(8)),
    sa.Column("salt", sa.String(32), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("revoked_at", sa.Float),
    # added for LLM keys (tokens are prompt + completion):
    sa.Column("tokens_per_minute", sa.BigInteger),
    sa.Column("token_quota", sa.BigInteger), sa.Column("token_quota_period", sa.String(8)))
agreements = sa.Table(
    "maas_agreements", meta,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("terms", sa.Text, nullable=False),  # JSON of AgreementConfig
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("published_at", sa.Float, nullable=False))
acceptances = sa.Table(
    "maas_acceptances", meta,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("accepted_at", sa.Float, nullable=False),
    sa.Column("accepted_by", sa.String(200), nullable=False),
    sa.Column("log_payloads", sa.Boolean, nullable=False))
usage = sa.Table(  # one row per minute, tenant, key, model, version and status
    "maas_usage", meta,
    sa.Column("minute", sa.BigInteger, primary_key=True),  # epoch seconds of the minute's start
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(12), primary_key=True),
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(16), primary_key=True),
    sa.Column("status", sa.Integer, primary_key=True),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),  # summed: mean = latency_ms / requests
    # added for LLM requests, the engine's counts:
    sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"))

# Tenants' fine-tuning (maas.finetune.uploads, maas.finetune.runs): uploaded files (their bytes
# live under state_dir/files), jobs and their events. No foreign key to tenants: with access
# off, everything belongs to the anonymous tenant.
files = sa.Table(
    "maas_files", meta,
    sa.Column("file_id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("deleted_at", sa.Float))  # the bytes are gone; the row stays for the audit
tuning_jobs = sa.Table(
    "maas_tuning_jobs", meta,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("base", sa.String(64), nullable=False),
    sa.Column("suffix", sa.String(64)),
    sa.Column("training_file", sa.String(40), nullable=False),
    sa.Column("validation_file", sa.String(40)),
    sa.Column("hyperparameters", sa.Text, nullable=False),  # JSON
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("app_name", sa.String(64), nullable=False),  # the tuned model's registry name
    sa.Column("fine_tuned_model", sa.String(255)),  # its public name, once it serves
    sa.Column("error", sa.Text),  # JSON {code, message, param}
    sa.Column("trained_tokens", sa.Integer),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float))
tuning_events = sa.Table(
    "maas_tuning_events", meta,
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.Text))  # JSON, e.g. {"step": 3, "train_loss": 1.2}

UsageKey = tuple[int, str, str, str, str, int]  # minute, tenant, key_id, model, version, status
