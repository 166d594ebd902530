"""The end of a pipeline run: a table of what is served and how to call it, or the same as
one JSON document (``--json``) for scripts."""

from __future__ import annotations

import json
import shlex

from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.table import Table

from jobs.stages import ModelReport
from maas.config import DeployConfig
from maas.report import print_wide
from maas.oip import row_request
from maas.llm.files import KIND as LLM_KIND
from maas.routes import OIP_ROOT, chat_route, embeddings_route
from maas.text import KIND as TEXT_KIND


class RunSummary(BaseModel):
    """What ``python -m jobs.pipeline --json`` prints (one line of JSON)."""

    run: str  # the run name: `--run-name` resumes it
    cluster: str  # how this process reached Ray: remote, local, embedded, attached
    ray_address: str
    dashboard: str | None
    tracking_uri: str
    log: str | None  # where Ray's and the libraries' output went (None with --verbose)
    models: list[ModelReport]


def _metric(report: ModelReport) -> str:
    return ", ".join(f"{k.removeprefix('held_out_').replace('_', ' ')} {v:.4f}"
                     for k, v in report.held_out.items() if k != "held_out_loss")


def _curls(cfg: DeployConfig, report: ModelReport) -> list[str]:
    auth = '-H "Authorization: Bearer $MAAS_API_KEY" ' if cfg.access.enabled else ""
    if report.kind == LLM_KIND:  # a language model answers at /v1/chat/completions only
        chat = json.dumps({"model": report.name, "max_tokens": 64,
                           "messages": [{"role": "user", "content": report.example}]})
        return [f"curl -s -X POST {cfg.cluster.base_url}{chat_route()} {auth}"
                f"-H 'Content-Type: application/json' -d {shlex.quote(chat)}"]
    if report.kind == TEXT_KIND:  # an embedder: OpenAI's shape (OIP's is in the guides)
        openai = json.dumps({"model": report.name, "input": [report.example]})
        return [f"curl -s -X POST {cfg.cluster.base_url}{embeddings_route()} {auth}"
                f"-H 'Content-Type: application/json' -d {shlex.quote(openai)}"]
    body = row_request(report.example)
    return [f"curl -s -X POST {report.endpoint} {auth}-H 'Content-Type: application/json' "
            f"-d {shlex.quote(body.model_dump_json(exclude_none=True))}"]


def print_summary(console: Console, cfg: DeployConfig, summary: RunSummary) -> None:
    """What is served now, with a curl command per model."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title="served",
                  title_justify="left")
    for column in ("model", "version", "variant", "held-out", "promoted"):
        table.add_column(column)
    # The route only: the base URL is on the last line, and a table of URLs wraps at 140 columns.
    table.add_column("route", overflow="fold")
    for r in summary.models:  # the version this run registered, and whether it serves
        serving = "-" if r.served_version is None else f"v{r.served_version} serves"
        table.add_row(r.name, str(r.version), r.variant, _metric(r),
                      "yes" if r.promoted else f"no ({serving})",
                      r.endpoint.removeprefix(cfg.cluster.base_url) if r.endpoint else "-")
    print_wide(console, table)
    if cfg.access.enabled:
        console.print("Try it (a key: `maas quickstart`, or `maas keys create`):",
                      highlight=False)
    for report in summary.models:
        if report.endpoint is not None:
            for line in _curls(cfg, report):
                console.print(f"  {line}", markup=False, highlight=False)
    base = cfg.cluster.base_url
    console.print(f"at {base}: API docs {base}/docs · health {base}{OIP_ROOT}/health/ready · dashboard "
                  f"{summary.dashboard or 'not running'} · MLflow {summary.tracking_uri} · "
                  f"resume with --run-name {summary.run}", markup=False, highlight=False)
    if summary.cluster == "embedded":
        console.print("[yellow]Ray ran embedded in this process: the endpoints stop when it "
                      "exits. Run `maas up` first to keep serving.[/]")
