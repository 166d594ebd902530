"""What every ``maas`` command shares: the consoles, config loading, errors, JSON and tables."""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from maas.config import ConfigError, DeployConfig, load_config
from maas.errors import MaasError
from maas.report import print_wide

if TYPE_CHECKING:
    from maas.access import AccessStore
    from maas.registry import RegistryReader

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigArg = typer.Argument(Path("deploy.yaml"), help="path to deploy.yaml")
ConfigOption = typer.Option(Path("deploy.yaml"), "--config", "-c",
                            help="deploy.yaml whose registry to use; missing: the defaults")
JsonOption = typer.Option(False, "--json", help="print JSON instead of tables")


def load(path: Path) -> DeployConfig:
    """``path`` parsed, or every problem on stderr and exit code 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(str(exc), markup=False, highlight=False, style="red")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` on stderr; return the Exit to raise."""
    err.print(message, markup=False, highlight=False, style="red")
    return typer.Exit(code)


def print_table(table: Table) -> None:
    """A table at full width, also when stdout is a pipe or a job log (80 columns)."""
    print_wide(console, table)


def echo_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))


T = TypeVar("T")


def guarded(action: Callable[[], T]) -> T:
    """Run ``action``; a maas error becomes its message on stderr and exit code 1."""
    try:
        return action()
    except MaasError as exc:
        raise fail(str(exc)) from None


def deploy_config(path: Path) -> DeployConfig:
    """deploy.yaml at ``path``, which the access commands need (exit code 2 without it)."""
    if not path.exists():
        raise fail(f"{path}: no such file; the access commands read the access store and the "
                   f"models from deploy.yaml (--config PATH)", 2)
    return load(path)


def access_store(cfg: DeployConfig, announce: bool = True) -> AccessStore:
    """The access store of ``cfg``, with deploy.yaml's agreements published."""
    from maas.access import AccessStore, publish_agreements

    store = guarded(lambda: AccessStore(cfg.access_store))
    for agreement, new in guarded(lambda: publish_agreements(store, cfg.models)):
        if new and agreement.version > 1 and announce:  # on stderr: --json stays parseable
            err.print(f"[yellow]agreement for {agreement.model} is now version "
                      f"{agreement.version} (its terms changed in deploy.yaml): tenants must "
                      f"accept it again[/]")
    return store


def registry_reader(uri: str, key_env: str) -> RegistryReader | None:
    """A reader of the registry database at ``uri`` for commands that only read (~0.1 s where
    MLflow's client takes ~3 s to import and open its store); None where MLflow's client is
    needed: a tracking server, MLflow's workspaces (maas.registry.reader), or a SQLite file
    not created yet (MLflow's client creates it)."""
    from maas.registry import RegistryReader, registry_view

    view = registry_view(uri, key_env)
    missing = uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()
    return view if isinstance(view, RegistryReader) and not missing else None


def who() -> str:
    """Who runs this command, as stores record it: user@host."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def key_scope(cfg: DeployConfig, models: str) -> list[str]:
    """``--models a,b`` as a list of deploy.yaml's model names (or '*'); exit code 2 else."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    known = {m.name for m in cfg.models}
    unknown = [n for n in names if n != "*" and n not in known]
    if not names or unknown:
        raise fail(f"--models: unknown model(s) {unknown or [models]}; deploy.yaml has "
                   f"{sorted(known)}, or use '*' for every model", 2)
    return names


def parse_option(parse: Callable[[str], T], text: Optional[str]) -> Optional[T]:
    """``parse(text)`` for an option given as text (None stays None); exit code 2 when
    ``parse`` refuses it, with its message."""
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
