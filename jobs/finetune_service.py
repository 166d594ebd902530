"""A tenant's fine-tuning job (``POST /v1/fine_tuning/jobs``): the Ray job the /v1 app
submits for it, one per job, never inside a serving replica.

    python -m jobs.finetune_service <state_dir>/fine_tuning/<job id>/spec.json

It runs what the pipeline runs for a fine-tuned model (jobs.tuned): Ray Train on the tenant's
file, the build, base against tuned on held-out rows and the probe set, the gate; then
registers the tuned model under its own name (``ft-<id>``, with its lineage and tenant),
serves it as an app only the tenant's keys may use, and marks the job succeeded. Status and
one event per step go to the access store (maas.finetune.runs), where the /v1 app reads them.
A cancelled job is stopped by Ray (``stop_job``); its status is already written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import ray.train
from rich.console import Console

from jobs.finetune import FinetuneData, load_data
from jobs.llm import register_llm
from jobs.stages import StageClock
from jobs.tuned import build_and_compare, finetune_stage, tuned_lineage
from maas.cluster import connect, ensure_auth_mode
from maas.errors import MaasError
from maas.finetune.runs import JobError, JobStore
from maas.finetune.spec import TuningSpec
from maas.llm.convert import resolve_source
from maas.registry import ModelNotFound, Registry
from maas.tracking import Tracker
from serve_apps.deploy import deploy_tuned, wait_for_version


class StepEvents(ray.train.UserCallback):
    """One job event per reported step (rank 0's loss, validation loss, tokens), written by
    the Ray Train controller, so ``GET .../events`` follows the run as it goes."""

    def __init__(self, store_url: str, job_id: str):
        self.store_url, self.job_id = store_url, job_id
        self._store: JobStore | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        rank0 = metrics[0]
        step, steps = int(rank0["step"]) + 1, int(rank0["total_steps"])
        data = {"step": step, "total_steps": steps, "train_loss": rank0["train_loss"],
                # rank 0's tokens of the step times the workers (all ranks' batches alike)
                "tokens": round(rank0["tokens_per_s"] * rank0["step_s"])}
        message = f"Step {step}/{steps}: training loss={rank0['train_loss']:.4f}"
        if "val_loss" in rank0:
            data["val_loss"] = rank0["val_loss"]
            message += f", validation loss={rank0['val_loss']:.4f}"
        if self._store is None:
            self._store = JobStore(self.store_url)
        self._store.add_event(self.job_id, message, data=data)


def trained_tokens(store: JobStore, job_id: str) -> int:
    """Tokens trained on, each step counted once (a resumed run reports some steps again)."""
    events, _ = store.events(job_id, limit=1_000_000)
    per_step = {e.data["step"]: e.data["tokens"] for e in events if e.data and "tokens" in e.data}
    return sum(per_step.values())


def _base_version(registry: Registry, base: str) -> tuple[str, str | None]:
    """The base model's production version and its source hash, when it is registered."""
    try:
        current = registry.current(base)
    except ModelNotFound:
        return "-", None
    return (str(current.version), current.data_fingerprint) if current else ("-", None)


def run_job(spec: TuningSpec, store: JobStore, console: Console) -> str:
    """Fine-tune, gate, register and serve: the tuned model's public name."""
    cfg, model = spec.deploy, spec.model
    connect(cfg.cluster, log_to_driver=False)
    tracker, registry = Tracker(cfg), Registry.from_config(cfg)
    clock = StageClock(console, model.name)
    data: FinetuneData = load_data(model.finetune, Path("/"))
    store.add_event(spec.job_id, f"Training on {len(data.train)} examples ({len(data.validation)}"
                                 f" validation, {len(data.heldout)} held out)")
    run_id = tracker.start(model.name, params=model.model_dump(mode="json"),
                           tags={"maas.model": model.name, "maas.source": "finetune",
                                 "maas.task": "chat", "maas.tenant": spec.tenant,
                                 "maas.fine_tuning_job": spec.job_id} | data.tags())
    ok = False
    try:
        source = resolve_source(model.pretrained.model)
        outcome = finetune_stage(cfg, model, source, data, tracker, run_id, model.name, clock,
                                 (StepEvents(cfg.access_store, spec.job_id),))
        store.add_event(spec.job_id, "Training done; building and evaluating the tuned model")
        compared = build_and_compare(cfg, model, source, data, outcome, tracker, run_id, clock)
        scores = (f"held-out task {compared.base.task.exact:.2f} -> "
                  f"{compared.tuned.task.exact:.2f}, probe {compared.base.probe:.2f} -> "
                  f"{compared.tuned.probe:.2f}")
        if not compared.decision.passed:
            raise MaasError(f"the tuned model did not pass the gate ({scores}): "
                            f"{compared.decision.reason}", status=422)
        store.add_event(spec.job_id, f"Evaluated: {scores}")
        base_version, base_sha = _base_version(registry, spec.base)
        chosen = compared.built.chosen
        lineage = tuned_lineage(model, data, outcome, compared, base_version,
                                base_sha or source.sha256, model.name)
        info = register_llm(model, chosen.folder, chosen.name, compared.built.source.sha256,
                            chosen.metrics() | compared.tuned.metrics(), run_id,
                            f"{spec.public_name}: {model.finetune.method} fine-tune of "
                            f"{spec.base} for tenant {spec.tenant}", registry,
                            lineage=lineage | {"tenant": spec.tenant, "job": spec.job_id,
                                               "base": spec.base})
        registry.promote(model.name, info.version)
        deploy_tuned(cfg, model, spec.tenant, spec.base)
        wait_for_version(cfg, model, info.version)
        ok = True
        return spec.public_name
    finally:
        tracker.finish(run_id, ok)


def main(argv: list[str]) -> int:
    ensure_auth_mode()
    spec = TuningSpec.model_validate_json(Path(argv[0]).read_text())
    store = JobStore(spec.deploy.access_store)
    if not store.set_status(spec.job_id, "running"):
        return 0  # cancelled while it was queued
    store.add_event(spec.job_id, f"Fine-tuning job started on Ray: {spec.base}, "
                                 f"{spec.model.finetune.method}")
    console = Console(soft_wrap=True)
    try:
        name = run_job(spec, store, console)
    except Exception as exc:  # noqa: BLE001 - every failure ends the job with its reason
        message = exc.message if isinstance(exc, MaasError) else f"{type(exc).__name__}: {exc}"
        code = "invalid_training_file" if getattr(exc, "status", 500) == 400 else \
            "gate_failed" if getattr(exc, "status", 500) == 422 else "server_error"
        store.add_event(spec.job_id, f"Fine-tuning job failed: {message}", level="error")
        store.set_status(spec.job_id, "failed",
                         error=JobError(code, message, getattr(exc, "param", None)))
        console.print_exception()
        return 1
    tokens = trained_tokens(store, spec.job_id)
    store.add_event(spec.job_id, f"The job has successfully completed: {name} serves")
    store.set_status(spec.job_id, "succeeded", fine_tuned_model=name, trained_tokens=tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
