"""``maas usage`` and ``maas catalog``: metered requests, and the model catalog.

    maas usage [--tenant acme] [--model digits] [--since 24h]
    maas catalog [--tenant acme]

Usage is priced with each model's ``catalog`` prices (maas.catalog.usage_cost): rows, and an
LLM's prompt and completion tokens.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer
from rich.table import Table

from maas.cli.common import (ConfigOption, JsonOption, access_store, deploy_config, echo_json,
                             parse_option, print_table, registry_reader)

if TYPE_CHECKING:  # maas.catalog loads the registry (MLflow): only the commands that need it
    from maas.catalog import Price


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
    """Metered requests per tenant, model, version and status: rows, LLM prompt and
    completion tokens, mean latency, and their cost at the catalog's prices."""
    from maas.catalog import usage_cost
    from maas.routes import priced_as

    cfg = deploy_config(config)
    rows = access_store(cfg, announce=False).usage(tenant, model,
                                                   parse_option(parse_since, since))
    prices = {m.name: m.catalog for m in cfg.models}
    priced = [prices.get(priced_as(r.model)) for r in rows]  # an explanation: its model's
    costs = [None if p is None else usage_cost(r, p) for r, p in zip(rows, priced)]
    if as_json:
        echo_json([asdict(r) | {"cost": None if cost is None else round(cost, 6),
                                "currency": None if cost is None else p.currency}
                   for r, cost, p in zip(rows, costs, priced)])
        return
    table = Table(title="usage" + (f" since {since}" if since else ""))
    for column in ("tenant", "model", "version", "status", "requests", "rows", "prompt tok",
                   "completion tok", "mean ms", "cost"):
        table.add_column(column)
    for r, cost, p in zip(rows, costs, priced):
        table.add_row(r.tenant, r.model, r.version, str(r.status), str(r.requests), str(r.rows),
                      str(r.prompt_tokens), str(r.completion_tokens), f"{r.mean_latency_ms:.2f}",
                      "-" if cost is None else f"{cost:.4f} {p.currency}")
    print_table(table)


def catalog(tenant: Optional[str] = typer.Option(None, "--tenant", "-t",
                                                 help="only what this tenant's keys may use"),
            config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """The model catalog: each model's card (what GET /v2/catalog answers)."""
    from maas.catalog import catalog as build, entries
    from maas.registry import Registry

    cfg = deploy_config(config)
    store = access_store(cfg, announce=False)
    visible: Callable[[str], bool] = lambda name: True  # noqa: E731
    if tenant is not None:
        live = [k for k in store.keys(tenant) if k.revoked_at is None]
        visible = lambda name: any(k.allows(name) for k in live)  # noqa: E731
    registry = registry_reader(cfg.registry_uri, cfg.registry.key_env)
    cards = build(entries(cfg), registry or Registry.from_config(cfg), store, visible)
    if as_json:
        echo_json([c.model_dump(mode="json") for c in cards])
        return
    table = Table(title="model catalog")
    for column in ("model", "description", "signature", "production", "versions", "held-out",
                   "context", "agreement", "price"):
        table.add_column(column)
    for c in cards:
        signature = " -> ".join(", ".join(f"{t.name}{t.shape}" for t in side)
                                for side in (c.inputs, c.outputs)) if c.inputs else "-"
        score = c.metrics.get("held_out_accuracy")
        table.add_row(c.name, c.description or "-", signature, str(c.production_version or "-"),
                      ",".join(map(str, c.versions)) or "-",
                      "-" if score is None else f"acc {score:.4f}",
                      "-" if c.context_length is None else f"{c.context_length} tokens",
                      "-" if c.agreement is None else f"v{c.agreement.version} {c.agreement.license}",
                      _price_text(c.price))
    print_table(table)


def _price_text(price: Price | None) -> str:
    """``0.5 USD / 1k rows``, ``0.1 / 0.3 USD per 1k input / output tokens``, or ``-``."""
    if price is None:
        return "-"
    parts = []
    if price.per_1k_rows is not None:
        parts.append(f"{price.per_1k_rows:g} {price.currency} / 1k rows")
    if price.per_1k_input_tokens is not None or price.per_1k_output_tokens is not None:
        inp, out = (f"{p:g}" if p is not None else "-" for p in
                    (price.per_1k_input_tokens, price.per_1k_output_tokens))
        parts.append(f"{inp} / {out} {price.currency} per 1k input / output tokens")
    return "; ".join(parts)
