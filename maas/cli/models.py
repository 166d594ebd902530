"""``maas models``: registered versions, their aliases, promote and roll back.

    maas models list | show NAME | promote NAME VERSION [--alias A] | rollback NAME | keygen
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from maas.cli.common import (ConfigOption, JsonOption, console, echo_json, guarded, load,
                             print_table, registry_reader)
from maas.config import DeployConfig

if TYPE_CHECKING:
    from maas.registry import Registry, RegistryReader

models_app = typer.Typer(no_args_is_help=True,
                         help="Registered models: versions, aliases, promote and roll back.")


def _registry(config: Path) -> Registry:
    """The registry ``config`` names (its state_dir, tracking and registry sections)."""
    from maas.config import expand_state_dir, sqlite_uri
    from maas.registry import Registry

    if config.exists():
        return Registry.from_config(load(config))
    state = expand_state_dir(DeployConfig.model_fields["state_dir"].default)
    state.mkdir(parents=True, exist_ok=True)
    return Registry(sqlite_uri(state))


def _reads(config: Path) -> Registry | RegistryReader:
    """What ``list`` and ``show`` read with: the registry's database straight, where it can
    be (maas.cli.common.registry_reader), else MLflow's client."""
    from maas.config import RegistryConfig, expand_state_dir, sqlite_uri

    if config.exists():
        cfg = load(config)
        uri, key_env = cfg.registry_uri, cfg.registry.key_env
    else:  # as _registry: the default state_dir's database
        uri = sqlite_uri(expand_state_dir(DeployConfig.model_fields["state_dir"].default))
        key_env = RegistryConfig.model_fields["key_env"].default
    return registry_reader(uri, key_env) or _registry(config)


@models_app.command("list")
def models_list(config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every registered model with its production and canary versions."""
    models = guarded(lambda: _reads(config).models())
    if as_json:
        echo_json([m.model_dump() for m in models])
        return
    table = Table(title="registered models")
    for column in ("model", "production", "canary", "versions", "latest", "updated"):
        table.add_column(column)
    for m in models:
        table.add_row(m.name, str(m.aliases.get("production", "-")),
                      str(m.aliases.get("canary", "-")), str(m.versions),
                      str(m.latest_version or "-"), m.updated_at)
    print_table(table)


@models_app.command("show")
def models_show(name: str, config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """One model's versions: aliases, variant, held-out metrics, hashes, source run."""
    registry = _reads(config)
    versions = guarded(lambda: registry.versions(name))
    if as_json:
        echo_json({"name": name, "versions": [v.model_dump() for v in versions]})
        return
    table = Table(title=f"{name} in {registry.uri}")
    for column in ("version", "aliases", "variant", "held-out", "size kB", "sha256", "encrypted",
                   "created", "run"):
        table.add_column(column)
    for v in versions:
        score = ", ".join(f"{k.removeprefix('held_out_')} {x:.4f}" for k, x in v.metrics.items()
                          if k in ("held_out_accuracy", "held_out_rmse", "min_cosine"))
        size = v.metrics.get("size_bytes")
        table.add_row(str(v.version), ", ".join(v.aliases), v.variant, score,
                      "-" if size is None else f"{size / 1000:.1f}", v.sha256[:12],
                      "yes" if v.encrypted else "no", v.created_at, (v.source_run or "-")[:12])
    print_table(table)


@models_app.command("promote")
def models_promote(name: str, version: int,
                   alias: str = typer.Option("production", "--alias", "-a",
                                             help="production or canary"),
                   config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Point ALIAS (default production) at VERSION, after verifying its artifact."""
    registry = _registry(config)
    previous = guarded(lambda: registry.promote(name, version, alias))
    if as_json:
        echo_json({"name": name, "alias": alias, "version": version, "previous": previous})
        return
    was = "unset" if previous is None else f"version {previous}"
    console.print(f"{name}: {alias} -> version {version} (was {was})", highlight=False)


@models_app.command("rollback")
def models_rollback(name: str, config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Move production back to the version that held it before the current one."""
    registry = _registry(config)
    current, target = guarded(lambda: registry.rollback(name))
    if as_json:
        echo_json({"name": name, "alias": "production", "from": current, "to": target})
        return
    console.print(f"{name}: production -> version {target} (was version {current})",
                  highlight=False)


@models_app.command("keygen")
def models_keygen() -> None:
    """Print a new random AES-256 key for registry.encrypt (base64, for registry.key_env)."""
    from maas.crypto import new_key

    typer.echo(new_key())
