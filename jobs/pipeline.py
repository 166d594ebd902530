"""Every model in deploy.yaml, end to end: train -> export, optimize, register -> serve -> predict.

    python -m jobs.pipeline deploy.yaml                     # what `maas run deploy.yaml` runs
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.pipeline deploy.yaml                 # the same, as a Ray job
    python -m jobs.pipeline deploy.yaml --run-name nightly  # resumable by that name

Each stage prints a line when it starts and when it ends, with its duration.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.table import Table

from maas.access import AccessError, AccessStore, onboard
from maas.cluster import Connection, connect, ensure_auth_mode
from maas.config import ConfigError, DeployConfig, ModelConfig, load_config
from maas.data import DataError, Splits, load_splits
from maas.export import ParityReport, check_parity, export_onnx
from maas.models import evaluate
from maas.optimize import BASELINE, VariantResult, build_variants, select
from maas.registry import CANARY, Registry, RegistryError, VersionInfo, config_hash, gate
from maas.oip import InferenceResponse
from maas.serving import EMBEDDINGS_ROUTE, base_url, deploy_model, wait_for_version
from maas.text import KIND as TEXT_KIND, TEXT_INPUT
from maas.tracking import Tracker

STAGES = 4
SMOKE_TENANT = "maas-pipeline"  # the smoke request's tenant: its usage shows under this name


class PipelineError(Exception):
    """A stage produced a result that must not be served."""


@dataclass(frozen=True)
class ModelReport:
    name: str
    version: int  # registered by this run
    variant: str  # the optimize variant that version is
    promoted: bool  # whether this run's version took the production alias
    promotion: str  # what the promotion policy decided, and why
    served_version: int | None  # the production version now served (None: nothing to serve)
    run_name: str
    held_out: dict[str, float]  # of the registered variant: held_out_accuracy or held_out_rmse
    # (an embedder: min_cosine and mean_cosine with the pretrained model's own embeddings)
    max_abs_diff: float | None  # torch vs ONNX Runtime (None: an embedder, compared by cosine)
    endpoint: str | None
    mlflow_run_id: str
    example_row: list[float] | str  # an embedder's: a sentence
    served_answer: Any  # the first value of the last output: the label for classifiers; an
    # embedder's: the cosine of its served embedding with sentence-transformers'
    kind: str = "onnx"  # or "text-embedding"

    @property
    def held_out_accuracy(self) -> float | None:
        return self.held_out.get("held_out_accuracy")


@contextmanager
def _stage(console: Console, number: int, title: str) -> Iterator[None]:
    console.print(f"[bold cyan][{number}/{STAGES}][/] {title} ...")
    started = time.perf_counter()
    yield
    console.print(f"[bold cyan][{number}/{STAGES}][/] {title} [green]done[/] "
                  f"in {time.perf_counter() - started:.1f}s")


def _oip_body(row: list[float]) -> dict:
    return {"id": "smoke", "inputs": [{"name": "input", "shape": [1, len(row)],
                                       "datatype": "FP32", "data": row}]}


def embedding_body(texts: list[str]) -> dict:
    """An OIP request embedding ``texts`` (a BYTES tensor, one string per row)."""
    return {"id": "smoke", "inputs": [{"name": TEXT_INPUT, "shape": [len(texts)],
                                       "datatype": "BYTES", "data": texts}]}


def _held_out(outcome_model: Any, splits: Splits) -> dict[str, float]:
    scores = evaluate(outcome_model, splits.x_test, splits.y_test, splits.task)
    if splits.task == "classification":
        return {"held_out_accuracy": scores["accuracy"], "held_out_loss": scores["loss"]}
    return {"held_out_rmse": scores["loss"] ** 0.5, "held_out_loss": scores["loss"]}


def _variants_table(results: list[VariantResult], chosen: str) -> Table:
    table = Table(title="variants (held-out rows, ONNX Runtime, 1 thread)")
    for column in ("variant", "accuracy", "drop", "size kB", "size x", "p50 ms b=1",
                   "p50 ms b=64", "nonzero params", ""):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, f"{r.accuracy:.4f}", f"{r.accuracy_drop:+.4f}",
                      f"{r.size_bytes / 1000:.1f}", f"{r.size_ratio:.2f}", f"{r.p50_ms[1]:.4f}",
                      f"{r.p50_ms[64]:.4f}", "-" if r.parameters is None else str(r.parameters),
                      "selected" if r.name == chosen else ("" if r.eligible else "too lossy"))
    return table


def _registered_metrics(held_out: dict[str, float], parity: ParityReport,
                        results: list[VariantResult], chosen: str) -> dict[str, float]:
    """The held-out metrics of the variant being registered (the fp32 ones when none ran)."""
    metrics = dict(held_out) | {"onnx_max_abs_diff": parity.max_abs_diff}
    if not results:
        return metrics
    by_name = {r.name: r for r in results}
    pick = by_name[chosen]
    metrics.pop("held_out_loss", None)  # a torch fp32 figure, not the variant's
    return metrics | {"held_out_accuracy": pick.accuracy,
                      "fp32_held_out_accuracy": by_name[BASELINE].accuracy,
                      "size_bytes": float(pick.size_bytes), "p50_ms_b1": pick.p50_ms[1],
                      "p50_ms_b64": pick.p50_ms[64]}


def _export_and_register(cfg: DeployConfig, model_cfg: ModelConfig, model: Any, splits: Splits,
                         run_id: str, run_name: str, held_out: dict[str, float],
                         tracker: Tracker, registry: Registry, console: Console
                         ) -> tuple[VersionInfo, ParityReport]:
    """Export to ONNX and refuse it unless ONNX Runtime matches torch; build and measure the
    configured variants; register the one ``optimize.select`` picks as a new version."""
    name = model_cfg.name
    with tempfile.TemporaryDirectory() as tmp:
        onnx_tmp = export_onnx(model, splits.n_features, Path(tmp) / "model.onnx",
                               model_cfg.export, splits.task)
        parity = check_parity(model, onnx_tmp, splits.x_test, splits.y_test, splits.task)
        agreement = ("" if parity.label_agreement is None
                     else f", label agreement {parity.label_agreement:.4f}")
        console.print(f"    ONNX Runtime vs torch on {parity.rows} held-out rows: "
                      f"max abs diff {parity.max_abs_diff:.2e}{agreement}")
        if not parity.ok(model_cfg.export.parity_atol):
            raise PipelineError(
                f"{name}: ONNX output differs from torch (max abs diff {parity.max_abs_diff:.2e} "
                f"> export.parity_atol {model_cfg.export.parity_atol:g}, or labels disagree); "
                f"not serving it")
        chosen, chosen_path, results = BASELINE, onnx_tmp, []
        if model_cfg.optimize.variants:
            from jobs.train import train_student

            results = build_variants(
                model, onnx_tmp, splits, model_cfg.optimize, model_cfg.export, Path(tmp),
                model_cfg.train.seed,
                distill=lambda: train_student(model_cfg, splits, model,
                                              cfg.state_path / "train", f"{run_name}-student"))
            pick = select(results, model_cfg.optimize)
            chosen, chosen_path = pick.name, Path(pick.path)
            # Wide enough for every column even when the job log is not a terminal (80 cols).
            Console(width=max(console.width, 140), file=console.file).print(
                _variants_table(results, chosen))
            tracker.log_variants(run_id, [r.as_row() for r in results], chosen)
        info = registry.register(
            name, chosen_path, run_id=run_id,
            metrics=_registered_metrics(held_out, parity, results, chosen), variant=chosen,
            data_fingerprint=splits.fingerprint, config_digest=config_hash(model_cfg),
            description=f"{chosen} from run {run_name}")
    sealed = ", encrypted" if info.encrypted else ""
    console.print(f"    registered {name} version {info.version} ({chosen}, sha256 "
                  f"{info.sha256[:12]}{sealed}) in {registry.uri}", highlight=False)
    return info, parity


def _apply_promotion(model_cfg: ModelConfig, info: VersionInfo, registry: Registry,
                     console: Console) -> tuple[bool, str]:
    """Give ``info`` the alias ``promotion.policy`` calls for; (promoted, what happened)."""
    name, version = model_cfg.name, info.version
    if model_cfg.promotion.policy == "manual":
        registry.promote(name, version, CANARY)
        outcome = (False, f"version {version} is the canary (promotion.policy manual); "
                          f"`maas models promote {name} {version}` puts it in production")
    else:
        production = registry.current(name)
        decision = gate(model_cfg.promotion, info, production)
        if decision.passed:
            previous = registry.promote(name, version)
            was = "" if previous is None else f" (was version {previous})"
            outcome = (True, f"version {version} promoted to production{was}: {decision.reason}")
        else:
            kept = "no version" if production is None else f"version {production.version}"
            outcome = (False, f"version {version} not promoted, {kept} stays in production: "
                              f"{decision.reason}")
    console.print(f"    {outcome[1]}", highlight=False)
    return outcome


@contextmanager
def _smoke_key(cfg: DeployConfig, model_cfg: ModelConfig) -> Iterator[dict[str, str]]:
    """Headers for the smoke request: with access on, a key of tenant ``maas-pipeline`` for
    this one model, with its agreement accepted and payload logging refused; revoked after."""
    if not cfg.access.enabled:
        yield {}
        return
    store = AccessStore(cfg.access_store)
    key, record, _ = onboard(store, [model_cfg], SMOKE_TENANT, "maas pipeline (smoke test)")
    try:
        yield {"Authorization": f"Bearer {key}"}
    finally:
        store.revoke(record.key_id)


def _ask_served_model(endpoint: str, row: list[float], truth: Any, console: Console,
                      headers: dict[str, str]) -> Any:
    """POST one row to the live endpoint; return the first value of its last output."""
    reply = requests.post(endpoint, json=_oip_body(row), timeout=60, headers=headers)
    if reply.status_code != 200:
        raise PipelineError(f"{endpoint} answered {reply.status_code}: {reply.text[:500]}")
    response = InferenceResponse.model_validate(reply.json())
    answer = response.outputs[-1]
    console.print(f"    {answer.name} {answer.data[:4]}, true value {truth} (model "
                  f"{response.model_name} version {response.model_version})", highlight=False)
    return answer.data[0]


def serve_and_ask(cfg: DeployConfig, model_cfg: ModelConfig, registry: Registry,
                  console: Console, asking: str, ask: Callable[[str, dict[str, str]], Any]
                  ) -> tuple[VersionInfo | None, str | None, Any]:
    """Stages 3 and 4: serve the production version, then ``ask(endpoint, headers)`` once
    with a smoke key; (the production version, the endpoint, the answer)."""
    name = model_cfg.name
    production = registry.current(name)
    if production is None:
        console.print(f"[yellow]{name} has no production version: nothing to serve[/]")
        return None, None, None
    with _stage(console, 3, f"serve {name} version {production.version} on Ray Serve"):
        endpoint = deploy_model(cfg, model_cfg)
        wait_for_version(cfg, model_cfg, production.version)
    with _stage(console, 4, f"{asking} {endpoint}"), _smoke_key(cfg, model_cfg) as headers:
        answer = ask(endpoint, headers)
    return production, endpoint, answer


def run_model(cfg: DeployConfig, model_cfg: ModelConfig, tracker: Tracker, registry: Registry,
              console: Console, run_suffix: str, base_dir: Path) -> ModelReport:
    """Train (or, for a pretrained model, export), register, promote, serve and query one
    model."""
    if model_cfg.source == "pretrained":
        from jobs.pretrained import run_pretrained

        return run_pretrained(cfg, model_cfg, tracker, registry, console, run_suffix)
    from jobs.train import EpochProgress, run_training

    name = model_cfg.name
    run_name = f"{name}-{run_suffix}"
    splits = load_splits(model_cfg.data, model_cfg.train.task, base_dir)
    console.print(f"    data {model_cfg.data.source}: {len(splits.y_train)} train, "
                  f"{len(splits.y_val)} validation, {len(splits.y_test)} held-out rows, "
                  f"{splits.n_features} features, {splits.n_outputs} outputs", highlight=False)
    run_id = tracker.start(run_name, params=model_cfg.model_dump(mode="json"),
                           tags={"maas.model": name, "maas.data_fingerprint": splits.fingerprint})
    ok = False
    try:
        with _stage(console, 1, f"train {name} as Ray Train run {run_name} "
                                f"({model_cfg.train.workers} workers, up to "
                                f"{model_cfg.train.epochs} epochs)"):
            progress = EpochProgress(name, model_cfg.train.epochs, tracker.uri, run_id)
            outcome = run_training(model_cfg, splits, cfg.state_path / "train", run_name,
                                   [progress])
            held_out = _held_out(outcome.model, splits)
            tracker.log_metrics(run_id, held_out)
            tracker.log_training_curve(run_id, f"{name} ({run_name})")
            shown = ", ".join(f"{k.removeprefix('held_out_')} {v:.4f}" for k, v in held_out.items())
            console.print(f"    held-out {shown} on {len(splits.y_test)} rows", highlight=False)

        with _stage(console, 2, f"export {name} to ONNX, check parity, optimize, register"):
            info, parity = _export_and_register(cfg, model_cfg, outcome.model, splits, run_id,
                                                run_name, held_out, tracker, registry, console)
            tracker.log_metrics(run_id, {"onnx_max_abs_diff": parity.max_abs_diff})
            promoted, promotion = _apply_promotion(model_cfg, info, registry, console)
            tracker.client.set_tag(run_id, "maas.registered_version", str(info.version))

        row = splits.x_test[0].tolist()
        production, endpoint, answer = serve_and_ask(
            cfg, model_cfg, registry, console, "send one held-out row to",
            lambda url, headers: _ask_served_model(url, row, splits.y_test[0].tolist(), console,
                                                   headers))
        ok = True
        return ModelReport(
            name=name, version=info.version, variant=info.variant, promoted=promoted,
            promotion=promotion, served_version=None if production is None else production.version,
            run_name=run_name,
            held_out={k: v for k, v in info.metrics.items() if k.startswith("held_out_")},
            max_abs_diff=parity.max_abs_diff, endpoint=endpoint, mlflow_run_id=run_id,
            example_row=row, served_answer=answer)
    finally:
        tracker.finish(run_id, ok)


def _print_summary(cfg: DeployConfig, connection: Connection, reports: list[ModelReport],
                   console: Console) -> None:
    for report in reports:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in report.held_out.items())
        console.print(f"\n[bold]{report.name}[/] version {report.version} "
                      f"({report.variant}): {shown}")
        console.print(f"  registry:   {report.promotion}", highlight=False)
        console.print(f"  MLflow:     run {report.mlflow_run_id} in {cfg.tracking_uri}")
        console.print(f"  resume:     --run-name {report.run_name.removeprefix(report.name + '-')}")
        if report.endpoint is None:
            continue
        text = report.kind == TEXT_KIND
        body = json.dumps(embedding_body([report.example_row]) if text
                          else _oip_body(report.example_row), separators=(",", ":"))
        console.print(f"  endpoint:   {report.endpoint} (serving version {report.served_version})")
        if text:
            console.print(f"  OpenAI:     {base_url(cfg)}{EMBEDDINGS_ROUTE}/embeddings "
                          f"(model {report.name!r})", highlight=False)
        console.print(f"  health:     {base_url(cfg)}/v2/health/ready")
        console.print("  try it:")
        auth = ""
        if cfg.access.enabled:
            auth = '-H "Authorization: Bearer $MAAS_API_KEY" '
            console.print("    (a key: `maas quickstart`, or `maas keys create --tenant T "
                          f"--models {report.name}` and `maas agreements accept`)",
                          highlight=False)
        console.print(f"    curl -s -X POST {report.endpoint} {auth}"
                      f"-H 'Content-Type: application/json' -d '{body}'",
                      markup=False, highlight=False)
        if text:
            openai_body = json.dumps({"model": report.name, "input": [report.example_row]})
            console.print(f"    curl -s -X POST {base_url(cfg)}{EMBEDDINGS_ROUTE}/embeddings "
                          f"{auth}-H 'Content-Type: application/json' -d '{openai_body}'",
                          markup=False, highlight=False)
    console.print(f"\nRay dashboard: {connection.dashboard_url or 'not running'}")
    if connection.mode == "embedded":
        console.print("[yellow]Ray ran embedded in this process: the endpoint stops when it "
                      "exits. Run `maas up` first to keep serving.[/]")


def new_run_suffix() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def run_pipeline(cfg: DeployConfig, console: Console | None = None, run_name: str | None = None,
                 base_dir: Path | None = None) -> list[ModelReport]:
    """Run every model of ``cfg`` through all stages on the cluster :func:`connect` picks.

    Each model trains as Ray Train run ``<model>-<run_name>`` (default: a UTC timestamp); the
    same ``run_name`` as an interrupted run resumes it from its last checkpoint. ``base_dir``
    resolves relative data paths (the directory of deploy.yaml).
    """
    console = console or Console(soft_wrap=True)
    connection = connect(cfg.cluster)
    console.print(f"Ray: {connection.mode} cluster at {connection.address}; "
                  f"state in {cfg.state_path}; MLflow at {cfg.tracking_uri}")
    tracker = Tracker(cfg)
    registry = Registry.from_config(cfg)
    registry.require_key()
    suffix = run_name or new_run_suffix()
    reports = [run_model(cfg, model_cfg, tracker, registry, console, suffix,
                         base_dir or Path.cwd()) for model_cfg in cfg.models]
    _print_summary(cfg, connection, reports, console)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="path to deploy.yaml")
    parser.add_argument("--run-name", default=None,
                        help="name this run; an interrupted run of the same name resumes")
    args = parser.parse_args(argv)
    ensure_auth_mode()
    console = Console(soft_wrap=True)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        console.print(str(exc), markup=False, highlight=False, style="red")
        return 2
    try:
        run_pipeline(cfg, console, args.run_name, Path(args.config).resolve().parent)
    except (PipelineError, DataError, RegistryError, AccessError) as exc:
        console.print(f"pipeline failed: {exc}", markup=False, highlight=False, style="red")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
