"""``maas keys`` and ``maas agreements``: API keys per tenant, and model agreements.

    maas keys create --tenant acme --models digits,digits-cnn --rate 50/s --quota 100000/day
    maas keys create --tenant acme --models chat --tokens-per-minute 20000 --token-quota 1000000/day
    maas keys list [--tenant acme]          maas keys revoke KEY_ID
    maas agreements list                    maas agreements show digits
    maas agreements accept --tenant acme --model digits --version 1 [--no-payload-logging]

Each reads the access store that deploy.yaml's ``access`` section names (``--config``), and
publishes the agreements written in deploy.yaml first: changed terms become a new version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from maas.cli.common import (ConfigOption, JsonOption, access_store, console, deploy_config,
                             echo_json, fail, guarded, key_scope, parse_option, print_table,
                             who)

keys_app = typer.Typer(no_args_is_help=True, help="API keys: one tenant each, shown once.")
agreements_app = typer.Typer(no_args_is_help=True,
                             help="Model agreements: terms per model, accepted per tenant.")


@keys_app.command("create")
def keys_create(
        tenant: str = typer.Option(..., "--tenant", "-t", help="who the key belongs to"),
        models: str = typer.Option(..., "--models", "-m", help="comma-separated names, or '*'"),
        rate: Optional[str] = typer.Option(None, "--rate", help="e.g. 50/s, 3000/min"),
        burst: Optional[int] = typer.Option(None, "--burst", help="requests at once after an "
                                            "idle spell; default: a fifth of a second's rate"),
        quota: Optional[str] = typer.Option(None, "--quota", help="e.g. 100000/day; periods: "
                                            "minute, hour, day, month (UTC)"),
        tokens_per_minute: Optional[int] = typer.Option(
            None, "--tokens-per-minute", min=1, help="LLMs: prompt + max_tokens reserved per "
                                                     "minute, e.g. 20000"),
        token_quota: Optional[str] = typer.Option(
            None, "--token-quota", help="LLMs: prompt + completion tokens per period, e.g. "
                                        "1000000/day; periods: minute, hour, day, month (UTC)"),
        config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Create an API key; it is printed once and only its salted hash is stored."""
    from maas.access import parse_quota, parse_rate, parse_token_quota

    cfg = deploy_config(config)
    scope = key_scope(cfg, models)
    limits = {"rate": parse_option(parse_rate, rate), "burst": burst,
              "quota": parse_option(parse_quota, quota), "tokens_per_minute": tokens_per_minute,
              "token_quota": parse_option(parse_token_quota, token_quota)}
    store = access_store(cfg)
    key, record = guarded(lambda: store.create_key(tenant, scope, created_by=who(), **limits))
    if as_json:
        echo_json({"key": key, **record.public()})
        return
    console.print(f"key for tenant {tenant} (models {', '.join(scope)}):", highlight=False)
    console.print(f"  {key}", markup=False, highlight=False)
    console.print("Shown only now; maas keeps a salted hash. Send it as "
                  "'Authorization: Bearer <key>'.", highlight=False)
    pending = [m for m in cfg.models if m.agreement is not None
               and (m.name in scope or "*" in scope)]
    for model in pending:
        agreement = store.agreement(model.name)
        console.print(f"  before using {model.name}: maas agreements accept --tenant {tenant} "
                      f"--model {model.name} --version {agreement.version}", highlight=False)


@keys_app.command("list")
def keys_list(tenant: Optional[str] = typer.Option(None, "--tenant", "-t"),
              config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every key (never the key itself): tenant, scope, request and token limits, created,
    revoked."""
    records = access_store(deploy_config(config)).keys(tenant)
    if as_json:
        echo_json([r.public() for r in records])
        return
    table = Table(title="API keys")
    for column in ("key", "tenant", "models", "rate/s", "burst", "quota", "tokens/min",
                   "token quota", "created", "revoked"):
        table.add_column(column)
    for r in records:
        p = r.public()
        table.add_row(p["prefix"] + "...", r.tenant, ",".join(r.models),
                      "-" if r.rate is None else f"{r.rate:g}", str(p["burst"] or "-"),
                      p["quota"] or "-", str(r.tokens_per_minute or "-"), p["token_quota"] or "-",
                      p["created_at"], p["revoked_at"] or "-")
    print_table(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="the key id, or the key's prefix"),
                config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Revoke a key: replicas refuse it (401) within access.refresh_s."""
    store = access_store(deploy_config(config))
    record = guarded(lambda: store.revoke(key_id))
    if as_json:
        echo_json(record.public())
        return
    console.print(f"revoked {record.public()['prefix']}... of tenant {record.tenant} at "
                  f"{record.public()['revoked_at']}", highlight=False)


@agreements_app.command("list")
def agreements_list(config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Each model's current agreement and the tenants that accepted that version."""
    cfg = deploy_config(config)
    store = access_store(cfg)
    rows = []
    for model in cfg.models:
        agreement = store.agreement(model.name)
        accepted = [] if agreement is None else sorted(
            {a.tenant for a in store.acceptances(model=model.name)
             if a.version == agreement.version})
        rows.append({"model": model.name, "agreement": agreement and agreement.public(),
                     "accepted_by_tenants": accepted})
    if as_json:
        echo_json(rows)
        return
    table = Table(title="model agreements")
    for column in ("model", "version", "license", "payload logging", "accepted by"):
        table.add_column(column)
    for row in rows:
        agreement = row["agreement"]
        if agreement is None:
            table.add_row(row["model"], "-", "(none: any key scoped to it works)", "no", "-")
            continue
        usage = agreement["terms"]["data_usage"]
        logging = (f"{usage['retention_days']} days, redaction {usage['redaction']}"
                   if usage["log_payloads"] else "no")
        table.add_row(row["model"], str(agreement["version"]), agreement["terms"]["license"],
                      logging, ", ".join(row["accepted_by_tenants"]) or "-")
    print_table(table)


@agreements_app.command("show")
def agreements_show(model: str, config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """A model's agreement: every version's terms, and who accepted which, when."""
    store = access_store(deploy_config(config))
    versions = store.agreement_versions(model)
    if not versions:
        raise fail(f"model {model!r} has no agreement; declare models[].agreement in deploy.yaml")
    accepted = store.acceptances(model=model)
    if as_json:
        echo_json({"model": model, "versions": [v.public() for v in versions],
                   "acceptances": [a.public() for a in accepted]})
        return
    current = versions[-1]
    console.print(f"[bold]{model}[/] agreement version {current.version} (current), published "
                  f"{current.public()['published_at']}:")
    console.print(json.dumps(current.public()["terms"], indent=2), markup=False,
                  highlight=False)
    for a in accepted:
        console.print(f"  accepted v{a.version} by tenant {a.tenant} ({a.accepted_by}) at "
                      f"{a.public()['accepted_at']}; payload logging "
                      f"{'allowed' if a.log_payloads else 'refused'}", highlight=False)


@agreements_app.command("accept")
def agreements_accept(
        tenant: str = typer.Option(..., "--tenant", "-t"),
        model: str = typer.Option(..., "--model", "-m"),
        version: int = typer.Option(..., "--version", "-v", help="the current version: "
                                    "`maas agreements show MODEL`"),
        by: Optional[str] = typer.Option(None, "--by", help="who accepts; default user@host"),
        payload_logging: bool = typer.Option(True, "--payload-logging/--no-payload-logging",
                                             help="--no-payload-logging: never log this "
                                                  "tenant's payloads, whatever the terms allow"),
        config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Record that TENANT accepts version VERSION of MODEL's agreement."""
    store = access_store(deploy_config(config))
    acceptance = guarded(lambda: store.accept(tenant, model, version, by or who(), payload_logging))
    if as_json:
        echo_json(acceptance.public())
        return
    console.print(f"tenant {tenant} accepted version {version} of {model}'s agreement "
                  f"({acceptance.accepted_by}, {acceptance.public()['accepted_at']})",
                  highlight=False)
