"""The pipeline of a fine-tuned chat model (``pretrained.task: chat`` with ``finetune``):
fine-tune -> build, measure, compare with the base -> register, gate -> serve -> ask.

    python -m jobs.pipeline deploy.yaml     # runs this for every chat model with `finetune`

The base (``pretrained.model``) is registered as the model's first version, so a tuned version
that fails ``finetune.gate`` leaves the base in production and ``maas models rollback`` from a
tuned version returns to it. The tuned model is built with the same builder and variants as
any pretrained LLM (jobs.llm), then base and tuned, at the chosen precision, answer the
held-out rows and the probe set side by side (maas.finetune.evaluate). The tuned version is
registered with its lineage: base model and version, data sha256 and row counts, method and
hyperparameters, the Ray Train run, both evaluations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import ray.train
from rich.console import Console
from rich.table import Table

from jobs.finetune import FinetuneData, FinetuneOutcome, load_data, run_finetune
from jobs.finetune_loop import planned_steps
from jobs.llm import ask_chat, build_variants, register_llm
from jobs.progress import EpochProgress, TrainingBar
from jobs.stages import ModelReport, StageClock, VariantRow, apply_promotion, serve_and_ask
from maas.config import DeployConfig, ModelConfig
from maas.finetune.evaluate import Evaluation, GateDecision, evaluate, gate
from maas.llm import files
from maas.llm.measure import Built
from maas.llm.convert import Source, hf_dir, resolve_source, variant_dir
from maas.registry import ModelNotFound, Registry, VersionInfo
from maas.report import print_wide
from maas.tracking import Tracker

BASE_ROLE = "base"


def finetune_stage(cfg: DeployConfig, model_cfg: ModelConfig, source: Source,
                   data: FinetuneData, tracker: Tracker, run_id: str, run_name: str,
                   clock: StageClock, callbacks: tuple[ray.train.UserCallback, ...] = ()
                   ) -> FinetuneOutcome:
    """Stage 1a: Ray Train on the base ``source``, with a progress bar of optimizer steps;
    ``callbacks`` also get every step's report."""
    ft = model_cfg.finetune
    base_hf = hf_dir(source, cfg.cache_path / "llm")
    steps = planned_steps(ft, len(data.train), ft.workers)[1]
    with clock.stage(1, "fine-tune", spinner=False) as stage:
        with TrainingBar(clock.console, tracker.uri, run_id, model_cfg.name, steps,
                         unit="steps", rate="tokens_per_s", verb="fine-tune"):
            outcome = run_finetune(
                ft, data, base_hf, cfg.state_path / "finetune" / run_name / "hf",
                cfg.state_path / "train", run_name,
                [EpochProgress(model_cfg.name, steps, tracker.uri, run_id, unit="step",
                               rate="tokens_per_s"), *callbacks])
        tracker.log_training_curve(run_id, f"{model_cfg.name} ({run_name})", unit="step",
                                   right=("perplexity", "val_perplexity"))
        metrics = outcome.metrics
        val = f", validation loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""
        stage.result = (f"{ft.method} on {len(data.train)} examples, {outcome.steps} steps, "
                        f"{ft.workers} workers: train loss {metrics['train_loss']:.4f}{val}")
    return outcome


def _comparison(base: Evaluation, tuned: Evaluation, rows: int) -> Table:
    table = Table(title=f"base vs tuned: {rows} held-out rows, the probe set",
                  title_justify="left")
    for column in ("model", "task exact", "task fields", "valid JSON", "probe"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, e in (("base", base), ("tuned", tuned)):
        table.add_row(name, f"{e.task.exact:.3f}", f"{e.task.fields:.3f}",
                      f"{e.task.valid_json:.3f}", f"{e.probe:.3f}")
    return table


def _base_version(cfg: DeployConfig, model_cfg: ModelConfig, source: Source,
                  registry: Registry, run_id: str, precision: str,
                  base: Evaluation) -> VersionInfo:
    """The model's version that is the base at ``precision``: registered the first time."""
    try:
        existing = registry.versions(model_cfg.name)
    except ModelNotFound:
        existing = []
    for info in existing:
        if (info.lineage.get("role") == BASE_ROLE and info.data_fingerprint == source.sha256
                and info.variant == precision):
            return info
    folder, _ = variant_dir(source, precision, cfg.cache_path / "llm")
    metrics = base.metrics() | {"context_length": float(files.context_length(folder))}
    info = register_llm(model_cfg, folder, precision, source.sha256, metrics, run_id,
                        f"base {model_cfg.pretrained.model}",
                        registry, lineage={"role": BASE_ROLE,
                                           "base_model": model_cfg.pretrained.model})
    if registry.current(model_cfg.name) is None:
        registry.promote(model_cfg.name, info.version)
    return info


@dataclass(frozen=True)
class Compared:
    """The tuned model built, and base and tuned scored side by side."""

    built: Built
    base: Evaluation
    tuned: Evaluation
    decision: GateDecision


def build_and_compare(cfg: DeployConfig, model_cfg: ModelConfig, source: Source,
                      data: FinetuneData, outcome: FinetuneOutcome, tracker: Tracker,
                      run_id: str, clock: StageClock) -> Compared:
    """Stage 1b: the tuned weights built into variants like any chat model's, then base and
    tuned (at the chosen precision) on the held-out rows and the probe set, both scores
    logged to the MLflow run ``run_id`` (base_*, tuned_*)."""
    ft = model_cfg.finetune
    tuned_cfg = model_cfg.model_copy(update={"pretrained": model_cfg.pretrained.model_copy(
        update={"model": str(outcome.hf_dir)})})
    built = build_variants(tuned_cfg, cfg, clock, number=1, title="build")
    with clock.stage(1, "compare") as stage:
        threads = model_cfg.serve.ort_threads
        base_folder, _ = variant_dir(source, built.chosen.name, cfg.cache_path / "llm")
        context = ft.max_length + ft.eval_max_tokens
        base = evaluate(base_folder, data.heldout, ft.eval_max_tokens, threads, context)
        tuned = evaluate(built.chosen.folder, data.heldout, ft.eval_max_tokens, threads, context)
        print_wide(clock.console, _comparison(base, tuned, len(data.heldout)), indent=6)
        decision = gate(base, tuned, ft.gate.min_task_gain, ft.gate.max_probe_drop)
        stage.result = f"{built.chosen.name}: {decision.reason}"
    tracker.log_metrics(run_id, base.metrics("base_") | tuned.metrics("tuned_"))
    return Compared(built, base, tuned, decision)


def tuned_lineage(model_cfg: ModelConfig, data: FinetuneData, outcome: FinetuneOutcome,
                  compared: Compared, base_version: str, base_sha256: str, run_name: str
                  ) -> dict[str, str]:
    """A tuned version's lineage tags (``base_version``: the base's registered version, or
    "-" when it has none)."""
    ft = model_cfg.finetune
    scores = {"base": compared.base.metrics(), "tuned": compared.tuned.metrics()}
    hyper = ft.model_dump(mode="json", exclude={"train_file", "validation_file",
                                                "heldout_file", "gate"})
    return {"role": "tuned", "base_model": model_cfg.pretrained.model,
            "base_version": base_version, "base_sha256": base_sha256,
            "method": ft.method, "hyperparameters": json.dumps(hyper), "train_run": run_name,
            "checkpoint": outcome.checkpoint_path,
            "evaluation": json.dumps(scores)} | data.lineage()


def _register_tuned(cfg: DeployConfig, model_cfg: ModelConfig, source: Source,
                    data: FinetuneData, outcome: FinetuneOutcome, compared: Compared,
                    registry: Registry, run_id: str, run_name: str, clock: StageClock
                    ) -> tuple[VersionInfo, bool, str]:
    """Stage 2: the base version (once), the tuned version over it, promoted by the gate."""
    ft, chosen, built = model_cfg.finetune, compared.built.chosen, compared.built
    with clock.stage(2, "register") as stage:
        base = _base_version(cfg, model_cfg, source, registry, run_id, chosen.name,
                             compared.base)
        metrics = chosen.metrics() | {"context_length": float(built.context_length)} | \
            compared.tuned.metrics()
        info = register_llm(model_cfg, chosen.folder, chosen.name, built.source.sha256,
                            metrics, run_id, f"{ft.method} fine-tune of "
                            f"{model_cfg.pretrained.model} on {ft.train_file}, run {run_name}",
                            registry,
                            lineage=tuned_lineage(model_cfg, data, outcome, compared,
                                                    str(base.version), base.data_fingerprint,
                                                    run_name))
        if compared.decision.passed:
            promoted, promotion = apply_promotion(model_cfg, info, registry)
            promotion = f"{promotion}; the gate passed"
        else:
            promoted, promotion = False, (f"version {info.version} not promoted, the gate "
                                          f"failed: {compared.decision.reason}")
        stage.result = (f"version {info.version} ({info.variant}; base is version "
                        f"{base.version}); {promotion}")
    return info, promoted, promotion


def run_tuned(cfg: DeployConfig, model_cfg: ModelConfig, tracker: Tracker, registry: Registry,
              console: Console, run_suffix: str, base_dir: Path) -> ModelReport:
    """Fine-tune, build, compare, register, gate, serve and ask one chat model."""
    name, ft = model_cfg.name, model_cfg.finetune
    run_name = f"{name}-{run_suffix}"
    clock = StageClock(console, name)
    data = load_data(ft, base_dir)
    clock.detail(f"data {ft.train_file}: {len(data.train)} train, {len(data.validation)} "
                 f"validation, {len(data.heldout)} held-out examples (sha256 "
                 f"{data.sha256[:12]})")
    run_id = tracker.start(run_name, params=model_cfg.model_dump(mode="json"),
                           tags={"maas.model": name, "maas.source": "finetune",
                                 "maas.task": "chat"} | data.tags())
    ok = False
    try:
        source = resolve_source(model_cfg.pretrained.model)  # the base: hashed once
        outcome = finetune_stage(cfg, model_cfg, source, data, tracker, run_id, run_name, clock)
        compared = build_and_compare(cfg, model_cfg, source, data, outcome, tracker, run_id,
                                     clock)
        tracker.log_variants(run_id, compared.built.variants, compared.built.chosen.name)
        info, promoted, promotion = _register_tuned(cfg, model_cfg, source, data, outcome,
                                                    compared, registry, run_id, run_name,
                                                    clock)
        tracker.client.set_tag(run_id, "maas.registered_version", str(info.version))
        example = data.heldout[0]
        question = [(m.role, m.content) for m in example.messages[:-1]]
        production, endpoint, answer = serve_and_ask(
            cfg, model_cfg, registry, clock, "ask",
            lambda url, headers: ask_chat(cfg.cluster.base_url, name, headers, question, None,
                                          max_tokens=ft.eval_max_tokens))
        ok = True
        base, tuned = compared.base, compared.tuned
        return ModelReport(
            name=name, kind=files.KIND, version=info.version, variant=info.variant,
            promoted=promoted, promotion=promotion,
            served_version=None if production is None else production.version,
            run_name=run_name,
            held_out={"task_exact": tuned.task.exact, "base_task_exact": base.task.exact,
                      "probe": tuned.probe, "base_probe": base.probe},
            max_abs_diff=None, endpoint=endpoint, mlflow_run_id=run_id,
            example=example.messages[-2].content, served_answer=answer,
            stage_seconds=clock.seconds,
            variants=[VariantRow(name=v.name, selected=v is compared.built.chosen,
                                 metrics=v.metrics()) for v in compared.built.variants])
    finally:
        tracker.finish(run_id, ok)
