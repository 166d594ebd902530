"""Every model in deploy.yaml, end to end: train (or export) -> register -> serve -> ask.

    python -m jobs.pipeline deploy.yaml                     # what `maas run deploy.yaml` runs
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.pipeline deploy.yaml                 # the same, as a Ray job
    python -m jobs.pipeline deploy.yaml --run-name nightly  # resumable by that name
    python -m jobs.pipeline deploy.yaml --json              # one JSON summary on stdout
    python -m jobs.pipeline deploy.yaml --verbose           # Ray's logs on the terminal too

Each model's stages print one line each when they finish (jobs.stages), training shows a
progress bar, and the run ends with a summary (jobs.summary). Models with ``source: train``
go through jobs.trained, those with ``source: pretrained`` through jobs.pretrained, or
jobs.llm for a language model (``pretrained.task: chat``).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from jobs.llm import run_llm
from jobs.pretrained import run_pretrained
from jobs.stages import ModelReport
from jobs.summary import RunSummary, print_summary
from jobs.terminal import Terminal, terminal
from jobs.trained import run_trained
from jobs.tuned import run_tuned
from maas.cluster import Connection, connect, ensure_auth_mode, session_logs_dir
from maas.config import DeployConfig, load_config
from maas.errors import MaasError
from maas.registry import Registry
from maas.stores import cluster_machines, require_shared_stores
from maas.tracking import Tracker


def new_run_suffix() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def log_name(run_name: str) -> str:
    """The file the run's other output goes to (jobs.terminal)."""
    return f"maas-pipeline-{run_name}.log"


def run_pipeline(cfg: DeployConfig, console: Console | None = None, run_name: str | None = None,
                 base_dir: Path | None = None, connection: Connection | None = None
                 ) -> list[ModelReport]:
    """Run every model of ``cfg`` through all stages on the cluster :func:`connect` picks
    (or ``connection``, already made).

    Each model trains as Ray Train run ``<model>-<run_name>`` (default: a UTC timestamp); the
    same ``run_name`` as an interrupted run resumes it from its last checkpoint. ``base_dir``
    resolves relative data paths (the directory of deploy.yaml).
    """
    console = console or Console(soft_wrap=True)
    connection = connection or connect(cfg.cluster)
    require_shared_stores(cfg, cluster_machines())
    tracker = Tracker(cfg)
    registry = Registry.from_config(cfg)
    registry.require_key()
    suffix = run_name or new_run_suffix()
    reports = []
    for model_cfg in cfg.models:
        console.print(f"[bold]{model_cfg.name}[/]", highlight=False)
        if model_cfg.finetune is not None:
            reports.append(run_tuned(cfg, model_cfg, tracker, registry, console, suffix,
                                     base_dir or Path.cwd()))
        elif model_cfg.source == "pretrained" and model_cfg.pretrained.task == "chat":
            reports.append(run_llm(cfg, model_cfg, tracker, registry, console, suffix))
        elif model_cfg.source == "pretrained":
            reports.append(run_pretrained(cfg, model_cfg, tracker, registry, console, suffix))
        else:
            reports.append(run_trained(cfg, model_cfg, tracker, registry, console, suffix,
                                       base_dir or Path.cwd()))
    return reports


def _run(cfg: DeployConfig, shown: Terminal, run_name: str, base_dir: Path,
         verbose: bool) -> RunSummary:
    connection = connect(cfg.cluster, log_to_driver=verbose)
    shown.move_log(session_logs_dir(), log_name(run_name))
    shown.console.print(f"Ray {connection.mode} cluster at {connection.address} · state "
                        f"{cfg.state_path} · run {run_name}"
                        + (f" · other output in {shown.log}" if shown.log else ""),
                        highlight=False)
    reports = run_pipeline(cfg, shown.console, run_name, base_dir, connection)
    return RunSummary(run=run_name, cluster=connection.mode, ray_address=connection.address,
                      dashboard=connection.dashboard_url, tracking_uri=cfg.tracking_uri,
                      log=None if shown.log is None else str(shown.log), models=reports)


def run_cli(config: Path, run_name: str | None, verbose: bool, json_out: bool) -> int:
    """The pipeline as a command (``maas run``, ``python -m jobs.pipeline``): its exit code.
    A maas error prints its message and where the full logs are; anything else, its type
    and message here and its traceback in the log."""
    ensure_auth_mode()
    try:
        cfg = load_config(config)
    except MaasError as exc:
        Console(stderr=True, soft_wrap=True).print(str(exc), markup=False, style="red")
        return 2
    run_name = run_name or new_run_suffix()
    with terminal(verbose, json_out, cfg.state_path / "logs", log_name(run_name)) as shown:
        try:
            summary = _run(cfg, shown, run_name, config.resolve().parent, verbose)
        except Exception as exc:  # noqa: BLE001 - every failure ends in a message and a code
            if not isinstance(exc, MaasError):
                traceback.print_exc()  # into the log (or the terminal, with --verbose)
            what = "failed" if isinstance(exc, MaasError) else f"crashed ({type(exc).__name__})"
            shown.errors.print(f"pipeline {what}: {exc}", markup=False, style="red")
            if shown.log is not None:
                shown.errors.print(f"full logs: {shown.log} (and the workers' logs in the Ray "
                                   f"dashboard); --verbose shows them here", markup=False)
            return 1
        if json_out:
            shown.data.write(summary.model_dump_json() + "\n")
            shown.data.flush()
        else:
            print_summary(shown.console, cfg, summary)
        _disconnect()  # while the log still takes them: Ray's last warnings come as it leaves
    return 0


def _disconnect() -> None:
    """Leave the Ray cluster now (a head from `maas up` keeps serving), not at exit."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="path to deploy.yaml")
    parser.add_argument("--run-name", default=None,
                        help="name this run; an interrupted run of the same name resumes")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and the libraries' logs on the terminal too")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one line of JSON on stdout, the stage lines "
                             "on stderr (with --verbose, stdout carries Ray's logs too: the "
                             "summary is the line that starts with {\"run\")")
    args = parser.parse_args(argv)
    return run_cli(args.config, args.run_name, args.verbose, args.json)


if __name__ == "__main__":
    sys.exit(main())
