"""``maas keys``, ``maas agreements``, ``maas usage``, ``maas catalog`` and ``maas quickstart``.

    maas keys create --tenant acme --models digits,digits-cnn --rate 50/s --quota 100000/day
    maas keys list [--tenant acme]          maas keys revoke KEY_ID
    maas agreements list                    maas agreements show digits
    maas agreements accept --tenant acme --model digits --version 1 [--no-payload-logging]
    maas usage [--tenant acme] [--model digits] [--since 24h]
    maas catalog [--tenant acme]            maas quickstart [--tenant demo]

Each reads the access store that deploy.yaml's ``access`` section names (``--config``), and
publishes the agreements written in deploy.yaml first: changed terms become a new version.
"""

from __future__ import annotations

import getpass
import json
import re
import shlex
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer
from rich.table import Table

from maas.cli_util import (ConfigOption, JsonOption, console, echo_json, err, fail, load,
                           print_wide)
from maas.config import DeployConfig

T = TypeVar("T")
keys_app = typer.Typer(no_args_is_help=True, help="API keys: one tenant each, shown once.")
agreements_app = typer.Typer(no_args_is_help=True,
                             help="Model agreements: terms per model, accepted per tenant.")


def _config(path: Path) -> DeployConfig:
    if not path.exists():
        raise fail(f"{path}: no such file; the access commands read the access store and the "
                   f"models from deploy.yaml (--config PATH)", 2)
    return load(path)


def _store(cfg: DeployConfig, announce: bool = True):
    """The access store of ``cfg``, with deploy.yaml's agreements published."""
    from maas.access import AccessStore, publish_agreements

    store = _call(lambda: AccessStore(cfg.access_store))
    for agreement, new in _call(lambda: publish_agreements(store, cfg.models)):
        if new and agreement.version > 1 and announce:  # on stderr: --json stays parseable
            err.print(f"[yellow]agreement for {agreement.model} is now version "
                          f"{agreement.version} (its terms changed in deploy.yaml): tenants "
                          f"must accept it again[/]")
    return store


def _call(action: Callable[[], T]) -> T:
    """Run ``action``; an AccessError becomes its message on stderr and exit code 1."""
    from maas.access import AccessError

    try:
        return action()
    except AccessError as exc:
        raise fail(str(exc)) from None


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _scope(cfg: DeployConfig, models: str) -> list[str]:
    names = [m.strip() for m in models.split(",") if m.strip()]
    known = {m.name for m in cfg.models}
    unknown = [n for n in names if n != "*" and n not in known]
    if not names or unknown:
        raise fail(f"--models: unknown model(s) {unknown or [models]}; deploy.yaml has "
                   f"{sorted(known)}, or use '*' for every model", 2)
    return names


def _parsed(parse: Callable[[str], T], text: Optional[str]) -> Optional[T]:
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise fail(str(exc), 2) from None


# ---- keys -------------------------------------------------------------------------------------

@keys_app.command("create")
def keys_create(
        tenant: str = typer.Option(..., "--tenant", "-t", help="who the key belongs to"),
        models: str = typer.Option(..., "--models", "-m", help="comma-separated names, or '*'"),
        rate: Optional[str] = typer.Option(None, "--rate", help="e.g. 50/s, 3000/min"),
        burst: Optional[int] = typer.Option(None, "--burst", help="requests at once after an "
                                            "idle spell; default: a fifth of a second's rate"),
        quota: Optional[str] = typer.Option(None, "--quota", help="e.g. 100000/day; periods: "
                                            "minute, hour, day, month (UTC)"),
        config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Create an API key; it is printed once and only its salted hash is stored."""
    from maas.access import parse_quota, parse_rate

    cfg = _config(config)
    scope = _scope(cfg, models)
    store = _store(cfg)
    key, record = _call(lambda: store.create_key(
        tenant, scope, rate=_parsed(parse_rate, rate), burst=burst,
        quota=_parsed(parse_quota, quota), created_by=_who()))
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
    """Every key (never the key itself): tenant, scope, limits, created, revoked."""
    records = _store(_config(config)).keys(tenant)
    if as_json:
        echo_json([r.public() for r in records])
        return
    table = Table(title="API keys")
    for column in ("key", "tenant", "models", "rate/s", "burst", "quota", "created", "revoked"):
        table.add_column(column)
    for r in records:
        p = r.public()
        table.add_row(p["prefix"] + "...", r.tenant, ",".join(r.models),
                      "-" if r.rate is None else f"{r.rate:g}", str(p["burst"] or "-"),
                      p["quota"] or "-", p["created_at"], p["revoked_at"] or "-")
    print_wide(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="the key id, or the key's prefix"),
                config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Revoke a key: replicas refuse it (401) within access.refresh_s."""
    store = _store(_config(config))
    record = _call(lambda: store.revoke(key_id))
    if as_json:
        echo_json(record.public())
        return
    console.print(f"revoked {record.public()['prefix']}... of tenant {record.tenant} at "
                  f"{record.public()['revoked_at']}", highlight=False)


# ---- agreements -------------------------------------------------------------------------------

@agreements_app.command("list")
def agreements_list(config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Each model's current agreement and the tenants that accepted that version."""
    cfg = _config(config)
    store = _store(cfg)
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
    print_wide(table)


@agreements_app.command("show")
def agreements_show(model: str, config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """A model's agreement: every version's terms, and who accepted which, when."""
    store = _store(_config(config))
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
    console.print(json.dumps(current.terms, indent=2), markup=False, highlight=False)
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
    store = _store(_config(config))
    acceptance = _call(lambda: store.accept(tenant, model, version, by or _who(), payload_logging))
    if as_json:
        echo_json(acceptance.public())
        return
    console.print(f"tenant {tenant} accepted version {version} of {model}'s agreement "
                  f"({acceptance.accepted_by}, {acceptance.public()['accepted_at']})",
                  highlight=False)


# ---- usage and catalog ------------------------------------------------------------------------

def parse_since(text: str, now: float | None = None) -> float:
    """``30m``, ``24h``, ``7d`` ago, or an ISO date/time (UTC unless it says otherwise)."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if match:
        return now - int(match.group(1)) * {"m": 60, "h": 3600, "d": 86400}[match.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: use 30m, 24h, 7d or a date such as 2026-11-01 "
                         f"(or 2026-11-01T12:00)") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def usage(tenant: Optional[str] = typer.Option(None, "--tenant", "-t"),
          model: Optional[str] = typer.Option(None, "--model", "-m"),
          since: Optional[str] = typer.Option(None, "--since", help="30m, 24h, 7d or a date"),
          config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Metered infer requests per tenant, model, version and status (rows, mean latency)."""
    cfg = _config(config)
    rows = _store(cfg, announce=False).usage(tenant, model, _parsed(parse_since, since))
    if as_json:
        echo_json(rows)
        return
    table = Table(title="usage" + (f" since {since}" if since else ""))
    for column in ("tenant", "model", "version", "status", "requests", "rows", "mean ms",
                   "price"):
        table.add_column(column)
    prices = {m.name: m.catalog for m in cfg.models}
    for r in rows:
        card = prices.get(r["model"])
        price = ("-" if card is None or card.price_per_1k_rows is None or r["status"] != 200
                 else f"{r['rows'] / 1000 * card.price_per_1k_rows:.4f} {card.currency}")
        table.add_row(r["tenant"], r["model"], r["version"], str(r["status"]),
                      str(r["requests"]), str(r["rows"]), f"{r['mean_latency_ms']:.2f}", price)
    print_wide(table)


def catalog(tenant: Optional[str] = typer.Option(None, "--tenant", "-t",
                                                 help="only what this tenant's keys may use"),
            config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """The model catalog: each model's card (what GET /v2/catalog answers)."""
    from maas.catalog import catalog as build, entries
    from maas.registry import Registry

    cfg = _config(config)
    store = _store(cfg, announce=False)
    visible: Callable[[str], bool] = lambda name: True  # noqa: E731
    if tenant is not None:
        live = [k for k in store.keys(tenant) if k.revoked_at is None]
        visible = lambda name: any(k.allows(name) for k in live)  # noqa: E731
    cards = build(entries(cfg), Registry.from_config(cfg), store, visible)
    if as_json:
        echo_json([c.model_dump(mode="json") for c in cards])
        return
    table = Table(title="model catalog")
    for column in ("model", "description", "signature", "production", "versions", "held-out",
                   "agreement", "price / 1k rows"):
        table.add_column(column)
    for c in cards:
        signature = " -> ".join(", ".join(f"{t.name}{t.shape}" for t in side)
                                for side in (c.inputs, c.outputs)) if c.inputs else "-"
        score = c.metrics.get("held_out_accuracy")
        table.add_row(c.name, c.description or "-", signature, str(c.production_version or "-"),
                      ",".join(map(str, c.versions)) or "-",
                      "-" if score is None else f"acc {score:.4f}",
                      "-" if c.agreement is None else
                      f"v{c.agreement['version']} {c.agreement['license']}",
                      "-" if c.price is None else f"{c.price['per_1k_rows']} {c.price['currency']}")
    print_wide(table)


def quickstart(tenant: str = typer.Option("demo", "--tenant", "-t"),
               config: Path = ConfigOption) -> None:
    """Onboard TENANT: a key for every model, their agreements accepted, each model called
    once with the key; prints the key and a curl command that works."""
    import requests

    from maas.access import onboard
    from maas.serving import EMBEDDINGS_ROUTE, base_url, embedding_models, model_route

    cfg = _config(config)
    if not cfg.access.enabled:
        raise fail("access.enabled is false in deploy.yaml: every route is open, no key needed")
    store = _store(cfg)
    key, record, accepted = _call(lambda: onboard(store, list(cfg.models), tenant,
                                                  f"{_who()} (maas quickstart)"))
    console.print(f"tenant {tenant}: key {record.public()['prefix']}... for "
                  f"{', '.join(record.models)}", highlight=False)
    for a in accepted:
        console.print(f"  accepted {a.model}'s agreement version {a.version}", highlight=False)
    root = base_url(cfg)
    for model in cfg.models:
        body = _example_body(model, config.resolve().parent)
        url = f"{root}{model_route(model.name)}/infer"
        try:
            reply = requests.post(url, json=body, timeout=30,
                                  headers={"Authorization": f"Bearer {key}"})
        except requests.RequestException as exc:
            raise fail(f"{url}: {exc}; is the model served? `make demo` runs `maas run` first")
        if reply.status_code != 200:
            raise fail(f"{url} answered {reply.status_code}: {reply.text[:300]}")
        outputs = reply.json()["outputs"]
        answer = outputs[0] if model.source == "pretrained" else outputs[-1]  # embedding; label
        console.print(f"  {model.name}: {answer['name']} {answer['data'][:4]}", highlight=False)
    console.print(f"\nYour key (shown only now):\n  export MAAS_API_KEY={key}", markup=False,
                  highlight=False)
    first = cfg.models[0]
    data = json.dumps(_example_body(first, config.resolve().parent), separators=(",", ":"))
    console.print("Try it:", highlight=False)
    console.print(f"  curl -s -X POST {root}{model_route(first.name)}/infer "
                  f"-H \"Authorization: Bearer $MAAS_API_KEY\" "
                  f"-H 'Content-Type: application/json' -d {shlex.quote(data)}",
                  markup=False, highlight=False)
    console.print(f"  curl -s {root}/v2/catalog -H \"Authorization: Bearer $MAAS_API_KEY\"",
                  markup=False, highlight=False)
    for model in embedding_models(cfg):
        data = json.dumps({"model": model.name, "input": [EXAMPLE_TEXT]})
        console.print(f"  curl -s -X POST {root}{EMBEDDINGS_ROUTE}/embeddings "
                      f"-H \"Authorization: Bearer $MAAS_API_KEY\" "
                      f"-H 'Content-Type: application/json' -d {shlex.quote(data)}",
                      markup=False, highlight=False)


EXAMPLE_TEXT = "How do I reset my password?"


def _example_body(model, base_dir: Path) -> dict:
    """One held-out row of ``model``'s data (a sentence, for an embedder) as an OIP request."""
    from maas.data import load_splits

    if model.source == "pretrained":
        return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                            "data": [EXAMPLE_TEXT]}]}
    row = load_splits(model.data, model.train.task, base_dir).x_test[0].tolist()
    return {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32",
                        "data": [round(v, 4) for v in row]}]}


def register_access_commands(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(agreements_app, name="agreements")
    app.command("usage")(usage)
    app.command("catalog")(catalog)
    app.command("quickstart")(quickstart)
