"""``maas up``, ``maas down`` and ``maas status``: the local Ray head and what runs on it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from maas.cli.common import ConfigArg, console, err, load
from maas.config import ClusterConfig


def _cluster_section(path: Path) -> ClusterConfig:
    """The cluster section of ``path``, or the defaults when there is no such file."""
    return load(path).cluster if path.exists() else ClusterConfig()


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
        cluster.attach(address, log_to_driver=False, logging_level="ERROR")
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
        prefix = (app_details.get("route_prefix") or "").rstrip("/")
        table.add_row(name, str(app_details.get("status")), f"http://{host}:{port}{prefix}")
    console.print(table)
