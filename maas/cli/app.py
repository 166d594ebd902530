"""The ``maas`` command line: the app and its top-level commands.

    maas validate deploy.yaml      maas up       maas run deploy.yaml [--json] [--verbose]
    maas status                    maas down     maas serve-config deploy.yaml
    maas models list | show NAME | promote NAME VERSION [--alias A] | rollback NAME | keygen
    maas keys create | list | revoke       maas agreements list | show | accept
    maas usage      maas catalog           maas quickstart
    maas finetune check FILE | example orders OUT_DIR

Heavy libraries (Ray, torch, MLflow) are imported inside the commands that need them, so
``maas validate`` answers in well under a second. docs/reference/cli.md is generated from this
app (docs/generate.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
import yaml

from maas.cli import cluster, finetune, keys, models, quickstart, usage
from maas.cli.common import ConfigArg, console, load

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="maas: train, export and serve models on Ray from one deploy.yaml.")


@app.command()
def validate(config: Path = ConfigArg) -> None:
    """Check deploy.yaml; print OK or every problem with its key path (exit code 2)."""
    from maas.stores import node_local_stores

    cfg = load(config)
    names = ", ".join(m.name for m in cfg.models)
    console.print(f"OK: {config} ({len(cfg.models)} model(s): {names})", highlight=False)
    local = node_local_stores(cfg)
    if local:  # fine on one machine; `maas run` refuses them on a cluster spanning machines
        console.print(f"[dim]One machine only: {'; '.join(local)}. A cluster spanning "
                      "machines needs PostgreSQL and an MLflow server (cluster/README.md).[/]",
                      highlight=False)


app.command()(cluster.up)
app.command()(cluster.down)
app.command()(cluster.status)


@app.command()
def run(config: Path = ConfigArg,
        run_name: Optional[str] = typer.Option(
            None, "--run-name", help="name this run; an interrupted run of this name resumes"),
        verbose: bool = typer.Option(False, "--verbose", "-v",
                                     help="show Ray's and the libraries' logs here too"),
        as_json: bool = typer.Option(False, "--json",
                                     help="print the summary as one line of JSON on stdout, "
                                          "the stage lines on stderr")
        ) -> None:
    """Train, export, serve and query every model in deploy.yaml (as `python -m jobs.pipeline`)."""
    from jobs.pipeline import run_cli

    code = run_cli(config, run_name, verbose, as_json)
    if code:
        raise typer.Exit(code)


@app.command("serve-config")
def serve_config(config: Path = ConfigArg,
                 output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                       help="write here instead of stdout")) -> None:
    """Print the Ray Serve config (for `serve deploy` and KubeRay's serveConfigV2)."""
    from maas.serve_config import serve_config as build

    text = yaml.safe_dump(build(load(config)), sort_keys=False)
    if output is None:
        typer.echo(text, nl=False)
    else:
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, output)
        console.print(f"wrote {output}")


app.add_typer(models.models_app, name="models")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(keys.agreements_app, name="agreements")
app.add_typer(finetune.finetune_app, name="finetune")
app.command("usage")(usage.usage)
app.command("catalog")(usage.catalog)
app.command("quickstart")(quickstart.quickstart)
