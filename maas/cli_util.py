"""What every ``maas`` command shares: the consoles, config loading, JSON and wide tables."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from maas.config import ConfigError, DeployConfig, load_config

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


def print_wide(table: Table) -> None:
    """A table at full width, also when stdout is a pipe or a job log (80 columns)."""
    Console(width=max(console.width, 140), file=console.file).print(table)


def echo_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))
