"""The ``maas`` command line.

    maas validate deploy.yaml      maas up       maas run deploy.yaml
    maas status                    maas down     maas serve-config deploy.yaml
    maas models list | show NAME | promote NAME VERSION [--alias A] | rollback NAME | keygen
    maas keys create | list | revoke       maas agreements list | show | accept
    maas usage      maas catalog           maas quickstart

Heavy libraries (Ray, torch, MLflow) are imported inside the commands that need them, so
``maas validate`` answers in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.table import Table

from maas.cli_util import (ConfigArg, ConfigOption, JsonOption, console, echo_json, err, load,
                           print_wide)
from maas.cli_access import register_access_commands
from maas.config import ClusterConfig, DeployConfig

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="maas: train, export and serve models on Ray from one deploy.yaml.")


def _cluster_section(path: Path) -> ClusterConfig:
    """The cluster section of ``path``, or the defaults when there is no such file."""
    return load(path).cluster if path.exists() else ClusterConfig()


@app.command()
def validate(config: Path = ConfigArg) -> None:
    """Check deploy.yaml; print OK or every problem with its key path (exit code 2)."""
    cfg = load(config)
    names = ", ".join(m.name for m in cfg.models)
    console.print(f"OK: {config} ({len(cfg.models)} model(s): {names})", highlight=False)


@app.command()
def up(config: Path = ConfigArg) -> None:
    """Start a detached local Ray head (token auth on) with the dashboard and Serve HTTP."""
    from maas import cluster

    cluster.ensure_auth_mode()
    cfg = _cluster_section(config)
    if cluster.head_running():
        console.print("A Ray head is already running on this machine; `maas status` shows it.")
        return
    with console.status("starting Ray head and Serve ..."):
        try:
            cluster.up(cfg)
        except RuntimeError as exc:
            err.print(str(exc), markup=False, style="red")
            raise typer.Exit(1) from None
    console.print(f"Ray head running. Dashboard: http://{cfg.dashboard_host}:{cfg.dashboard_port}")
    console.print(f"Serve HTTP:  http://{cfg.http_host}:{cfg.http_port}   "
                  f"Prometheus metrics: port {cfg.metrics_port}")
    console.print("Token auth is on (token in ~/.ray/auth_token). For `ray job submit` and other "
                  "Ray clients, first: export RAY_AUTH_MODE=token", highlight=False)


@app.command()
def down() -> None:
    """Stop the local Ray head and every Ray process of this user on this machine."""
    from maas import cluster

    cluster.ensure_auth_mode()
    with console.status("stopping Ray ..."):
        survivors = cluster.down()
    if survivors:
        for pid, cmdline in survivors:
            err.print(f"still running: pid {pid}: {cmdline}", markup=False)
        raise typer.Exit(1)
    console.print("Ray stopped; no Ray processes left.")


@app.command()
def status(config: Path = ConfigArg) -> None:
    """Show the cluster's nodes, jobs and Serve applications with their URLs."""
    from maas import cluster

    cluster.ensure_auth_mode()
    import ray

    cfg = _cluster_section(config)
    address = cluster.configured_address(cfg) or cluster.local_head_address()
    if address is None:
        err.print("No Ray cluster is running here; start one with `maas up`.")
        raise typer.Exit(1)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except ConnectionError:
        err.print(f"No Ray cluster answers at {address}; start one with `maas up`.")
        raise typer.Exit(1) from None
    dashboard = cluster.dashboard_url()
    console.print(f"Ray cluster at {ray.get_runtime_context().gcs_address}; "
                  f"dashboard {dashboard or 'not running'}")
    _print_nodes(ray.nodes())
    if dashboard:
        _print_jobs(dashboard, own_job_id=ray.get_runtime_context().get_job_id())
        _print_serve(dashboard, cfg)
    ray.shutdown()


def _print_nodes(nodes: list[dict]) -> None:
    table = Table(title="nodes")
    for column in ("node", "address", "state", "CPU", "GPU", "memory GiB"):
        table.add_column(column)
    for node in nodes:
        res = node.get("Resources", {})
        table.add_row(node["NodeID"][:12], node.get("NodeManagerAddress", "?"),
                      "alive" if node.get("Alive") else "dead", f"{res.get('CPU', 0):g}",
                      f"{res.get('GPU', 0):g}", f"{res.get('memory', 0) / 2**30:.1f}")
    console.print(table)


def _print_jobs(dashboard: str, own_job_id: str) -> None:
    from ray.job_submission import JobSubmissionClient

    table = Table(title="jobs")
    for column in ("job", "kind", "status", "entrypoint"):
        table.add_column(column)
    for job in JobSubmissionClient(dashboard).list_jobs():
        if job.job_id == own_job_id:  # this `maas status` connection itself
            continue
        table.add_row(job.submission_id or job.job_id or "?", str(job.type.value).lower(),
                      str(job.status.value), (job.entrypoint or "")[:80])
    console.print(table)


def _print_serve(dashboard: str, cfg: ClusterConfig) -> None:
    # The serve CLI's own client: the dashboard REST API that `serve status` reads.
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(dashboard).get_serve_details()
    table = Table(title="Serve applications")
    for column in ("application", "status", "URL"):
        table.add_column(column)
    host = "127.0.0.1" if cfg.http_host == "0.0.0.0" else cfg.http_host
    port = (details.get("http_options") or {}).get("port", cfg.http_port)
    for name, app_details in sorted((details.get("applications") or {}).items()):
        prefix = app_details.get("route_prefix") or ""
        table.add_row(name, str(app_details.get("status")), f"http://{host}:{port}{prefix}")
    console.print(table)


@app.command()
def run(config: Path = ConfigArg,
        run_name: Optional[str] = typer.Option(
            None, "--run-name", help="name this run; an interrupted run of this name resumes")
        ) -> None:
    """Train, export, serve and query every model in deploy.yaml (as `python -m jobs.pipeline`)."""
    from maas.cluster import ensure_auth_mode

    cfg = load(config)
    ensure_auth_mode()
    from jobs.pipeline import PipelineError, run_pipeline
    from maas.data import DataError
    from maas.access import AccessError
    from maas.registry import RegistryError

    try:
        run_pipeline(cfg, console, run_name, config.resolve().parent)
    except (PipelineError, DataError, RegistryError, AccessError) as exc:
        err.print(f"pipeline failed: {exc}", markup=False, style="red")
        raise typer.Exit(1) from None


models_app = typer.Typer(no_args_is_help=True,
                         help="Registered models: versions, aliases, promote and roll back.")
app.add_typer(models_app, name="models")


def _registry(config: Path):
    """The registry ``config`` names (its state_dir, tracking and registry sections)."""
    from maas.config import expand_state_dir, sqlite_uri
    from maas.registry import Registry

    if config.exists():
        return Registry.from_config(load(config))
    state = expand_state_dir(DeployConfig.model_fields["state_dir"].default)
    state.mkdir(parents=True, exist_ok=True)
    return Registry(sqlite_uri(state))


def _registry_call(action):
    """Run ``action``; a RegistryError becomes its message on stderr and exit code 1."""
    from maas.registry import RegistryError

    try:
        return action()
    except RegistryError as exc:
        err.print(str(exc), markup=False, highlight=False, style="red")
        raise typer.Exit(1) from None


@models_app.command("list")
def models_list(config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every registered model with its production and canary versions."""
    models = _registry_call(lambda: _registry(config).models())
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
    print_wide(table)


@models_app.command("show")
def models_show(name: str, config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """One model's versions: aliases, variant, held-out metrics, hashes, source run."""
    registry = _registry(config)
    versions = _registry_call(lambda: registry.versions(name))
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
    print_wide(table)


@models_app.command("promote")
def models_promote(name: str, version: int,
                   alias: str = typer.Option("production", "--alias", "-a",
                                             help="production or canary"),
                   config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Point ALIAS (default production) at VERSION, after verifying its artifact."""
    registry = _registry(config)
    previous = _registry_call(lambda: registry.promote(name, version, alias))
    if as_json:
        echo_json({"name": name, "alias": alias, "version": version, "previous": previous})
        return
    was = "unset" if previous is None else f"version {previous}"
    console.print(f"{name}: {alias} -> version {version} (was {was})", highlight=False)


@models_app.command("rollback")
def models_rollback(name: str, config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Move production back to the version that held it before the current one."""
    registry = _registry(config)
    current, target = _registry_call(lambda: registry.rollback(name))
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


@app.command("serve-config")
def serve_config(config: Path = ConfigArg,
                 output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                       help="write here instead of stdout")) -> None:
    """Print the Ray Serve config (for `serve deploy` and KubeRay's serveConfigV2)."""
    from maas.serving import serve_config as build

    text = yaml.safe_dump(build(load(config)), sort_keys=False)
    if output is None:
        typer.echo(text, nl=False)
    else:
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, output)
        console.print(f"wrote {output}")


register_access_commands(app)

if __name__ == "__main__":
    app()
