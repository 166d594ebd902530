"""The pipeline of a trained model (``source: train``): train -> export, optimize, register ->
serve -> ask.

    python -m jobs.pipeline deploy.yaml     # runs this for every model with source: train

The ONNX export is refused unless ONNX Runtime matches torch on the held-out rows; each
``optimize.variants`` entry is built and measured, and the one ``optimize.select`` picks is
registered, promoted by ``promotion``, served, and asked for one held-out row.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from torch import nn

from jobs.progress import EpochProgress, TrainingBar
from jobs.stages import (ModelReport, PipelineError, StageClock, VariantRow, apply_promotion,
                         serve_and_ask)
from jobs.train import run_training, train_student
from maas.config import DeployConfig, ModelConfig
from maas.data import Splits, load_splits
from maas.export import ParityReport, check_parity, export_onnx
from maas.models import evaluate
from maas.oip import InferenceResponse, row_request
from maas.optimize import BASELINE, VariantResult, build_variants, select
from maas.registry import Registry, VersionInfo, config_hash
from maas.report import print_wide
from maas.variants import variants_table
from maas.tracking import Tracker


def run_trained(cfg: DeployConfig, model_cfg: ModelConfig, tracker: Tracker, registry: Registry,
                console: Console, run_suffix: str, base_dir: Path) -> ModelReport:
    """Train, export, register, promote, serve and query one model."""
    name, run_name = model_cfg.name, f"{model_cfg.name}-{run_suffix}"
    clock = StageClock(console, name)
    splits = load_splits(model_cfg.data, model_cfg.train.task, base_dir)
    clock.detail(f"data {model_cfg.data.source}: {len(splits.y_train)} train, "
                 f"{len(splits.y_val)} validation, {len(splits.y_test)} held-out rows, "
                 f"{splits.n_features} features, {splits.n_outputs} outputs")
    run_id = tracker.start(run_name, params=model_cfg.model_dump(mode="json"),
                           tags={"maas.model": name, "maas.data_fingerprint": splits.fingerprint})
    ok = False
    try:
        model, held_out = _train(cfg, model_cfg, splits, tracker, run_id, run_name, clock)
        with clock.stage(2, "export, optimize, register") as stage:
            info, parity, variants = _export_and_register(
                cfg, model_cfg, model, splits, run_id, run_name, held_out, tracker, registry,
                clock)
            promoted, promotion = apply_promotion(model_cfg, info, registry)
            tracker.client.set_tag(run_id, "maas.registered_version", str(info.version))
            stage.result = (f"registered version {info.version} ({info.variant}, sha256 "
                            f"{info.sha256[:12]}{', encrypted' if info.encrypted else ''}); "
                            f"{promotion}")
        row, truth = splits.x_test[0].tolist(), splits.y_test[0].tolist()
        production, endpoint, answer = serve_and_ask(
            cfg, model_cfg, registry, clock, "ask",
            lambda url, headers: _ask_served_model(url, row, truth, headers))
        ok = True
        return ModelReport(
            name=name, kind="onnx", version=info.version, variant=info.variant,
            promoted=promoted, promotion=promotion,
            served_version=None if production is None else production.version,
            run_name=run_name,
            held_out={k: v for k, v in info.metrics.items() if k.startswith("held_out_")},
            max_abs_diff=parity.max_abs_diff, endpoint=endpoint, mlflow_run_id=run_id,
            example=row, served_answer=answer, stage_seconds=clock.seconds,
            variants=[VariantRow(name=v.name, selected=v.name == info.variant,
                                 metrics=v.metrics()) for v in variants])
    finally:
        tracker.finish(run_id, ok)


def _held_out(model: nn.Module, splits: Splits) -> dict[str, float]:
    scores = evaluate(model, splits.x_test, splits.y_test, splits.task)
    if splits.task == "classification":
        return {"held_out_accuracy": scores["accuracy"], "held_out_loss": scores["loss"]}
    return {"held_out_rmse": scores["loss"] ** 0.5, "held_out_loss": scores["loss"]}


def _train(cfg: DeployConfig, model_cfg: ModelConfig, splits: Splits, tracker: Tracker,
           run_id: str, run_name: str, clock: StageClock) -> tuple[nn.Module, dict[str, float]]:
    """Stage 1: Ray Train, with a progress bar fed from the run's MLflow metrics."""
    train = model_cfg.train
    with clock.stage(1, "train", spinner=False) as stage:
        with TrainingBar(clock.console, tracker.uri, run_id, model_cfg.name, train.epochs):
            outcome = run_training(model_cfg, splits, cfg.state_path / "train", run_name,
                                   [EpochProgress(model_cfg.name, train.epochs, tracker.uri,
                                                  run_id)])
        held_out = _held_out(outcome.model, splits)
        tracker.log_metrics(run_id, held_out)
        tracker.log_training_curve(run_id, f"{model_cfg.name} ({run_name})")
        shown = ", ".join(f"{k.removeprefix('held_out_')} {v:.4f}" for k, v in held_out.items())
        stage.result = (f"held-out {shown} on {len(splits.y_test)} rows (Ray Train run "
                        f"{run_name}, {train.workers} workers)")
    return outcome.model, held_out


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


def _export_and_register(cfg: DeployConfig, model_cfg: ModelConfig, model: nn.Module,
                         splits: Splits, run_id: str, run_name: str, held_out: dict[str, float],
                         tracker: Tracker, registry: Registry, clock: StageClock
                         ) -> tuple[VersionInfo, ParityReport, list[VariantResult]]:
    """Export to ONNX and refuse it unless ONNX Runtime matches torch; build and measure the
    configured variants; register the one ``optimize.select`` picks as a new version."""
    name, optimize = model_cfg.name, model_cfg.optimize
    with tempfile.TemporaryDirectory() as tmp:
        onnx_tmp = export_onnx(model, splits.n_features, Path(tmp) / "model.onnx",
                               model_cfg.export, splits.task)
        parity = check_parity(model, onnx_tmp, splits.x_test, splits.y_test, splits.task)
        agreement = ("" if parity.label_agreement is None
                     else f", label agreement {parity.label_agreement:.4f}")
        clock.detail(f"ONNX Runtime vs torch on {parity.rows} held-out rows: max abs diff "
                     f"{parity.max_abs_diff:.2e}{agreement}")
        tracker.log_metrics(run_id, {"onnx_max_abs_diff": parity.max_abs_diff})
        if not parity.ok(model_cfg.export.parity_atol):
            raise PipelineError(
                f"{name}: ONNX output differs from torch (max abs diff {parity.max_abs_diff:.2e} "
                f"> export.parity_atol {model_cfg.export.parity_atol:g}, or labels disagree); "
                f"not serving it")
        chosen, chosen_path, results = BASELINE, onnx_tmp, []
        if optimize.variants:
            results = build_variants(
                model, onnx_tmp, splits, optimize, model_cfg.export, Path(tmp),
                model_cfg.train.seed,
                distill=lambda: train_student(model_cfg, splits, model,
                                              cfg.state_path / "train", f"{run_name}-student"))
            pick = select(results, optimize)
            chosen, chosen_path = pick.name, Path(pick.path)
            print_wide(clock.console, variants_table(
                "variants (held-out rows, ONNX Runtime, 1 thread)", results, chosen,
                lambda r: r.eligible), indent=6)
            tracker.log_variants(run_id, results, chosen)
        info = registry.register(
            name, chosen_path, run_id=run_id,
            metrics=_registered_metrics(held_out, parity, results, chosen), variant=chosen,
            data_fingerprint=splits.fingerprint, config_digest=config_hash(model_cfg),
            description=f"{chosen} from run {run_name}")
    return info, parity, results


def _ask_served_model(endpoint: str, row: list[float], truth: Any, headers: dict[str, str]
                      ) -> tuple[Any, str]:
    """POST one row to the live endpoint: (the first value of its last output, a line)."""
    reply = requests.post(endpoint, json=row_request(row, "smoke").model_dump(exclude_none=True),
                          timeout=60, headers=headers)
    if reply.status_code != 200:
        raise PipelineError(f"{endpoint} answered {reply.status_code}: {reply.text[:500]}")
    response = InferenceResponse.model_validate(reply.json())
    answer = response.outputs[-1]
    return answer.data[0], (f"one held-out row: {answer.name} {answer.data[:4]}, true value "
                            f"{truth} (version {response.model_version})")
