"""The pipeline of a pretrained language model (``pretrained.task: chat``):
build -> measure -> register -> serve -> ask.

    python -m jobs.pipeline deploy.yaml     # runs this for every model with task: chat

The model (a GGUF file, a Hugging Face directory, or a package shipping one) is converted once
and built by the onnxruntime-genai builder at fp32 and each ``optimize.variants`` precision,
all cached under ``cache_dir/llm`` (default ``state_dir/cache``) by the source's sha256, so
a second run only measures. Every variant is scored on the held-out text shipped with maas
(maas.llm.measure); the one ``optimize.select`` picks among those that pass
``pretrained.chat``'s gate is registered with every file the engine needs as verified assets
(maas.llm.files). The smoke request asks the served model for the capital of France at
temperature 0.
"""

from __future__ import annotations

from pathlib import Path

import requests
from rich.console import Console

from jobs.stages import (ModelReport, PipelineError, StageClock, VariantRow, apply_promotion,
                         serve_and_ask)
from maas.config import DeployConfig, ModelConfig
from maas.llm import files, measure
from maas.llm.convert import LlmError
from maas.registry import Registry, VersionInfo, config_hash
from maas.report import print_wide
from maas.routes import chat_route
from maas.tracking import Tracker
from maas.variants import variants_table

SMOKE_QUESTION = "What is the capital of France?"
SMOKE_ANSWER = "Paris"  # what the answer must contain


def build_variants(model_cfg: ModelConfig, cfg: DeployConfig, clock: StageClock,
                   number: int = 1, title: str = "build and measure") -> measure.Built:
    """Stage 1: build (or find in the cache) and measure every variant; the variants table."""
    settings = model_cfg.pretrained
    with clock.stage(number, title) as stage:
        try:
            built = measure.build(settings, model_cfg.optimize, cfg.cache_path / "llm",
                                  model_cfg.serve.ort_threads)
        except LlmError as exc:
            raise PipelineError(f"{model_cfg.name}: {exc}") from None
        gate = measure.eligible(measure.gate_of(settings))
        print_wide(clock.console, variants_table(
            f"variants ({built.blocks} held-out texts, {built.tokens} tokens vs fp32; decode "
            f"with onnxruntime-genai, greedy)", built.variants, built.chosen.name, gate),
            indent=6)
        cached = sum(v.cached for v in built.variants)
        stage.result = (f"{settings.model}: {len(built.variants)} variants ({cached} from the "
                        f"cache), context {built.context_length} tokens")
    return built


def register_llm(model_cfg: ModelConfig, folder: Path, variant: str, source_sha256: str,
                 metrics: dict[str, float], run_id: str, description: str, registry: Registry,
                 lineage: dict[str, str] | None = None) -> VersionInfo:
    """The built variant in ``folder`` as the next version, every file the engine needs as
    a verified asset."""
    return registry.register(
        model_cfg.name, folder / files.GRAPH_FILE, run_id=run_id, metrics=metrics,
        variant=variant, data_fingerprint=source_sha256, config_digest=config_hash(model_cfg),
        description=description, kind=files.KIND, signature=files.served_signature(),
        assets=files.assets(folder), lineage=lineage)


def _register(model_cfg: ModelConfig, built: measure.Built, run_id: str, run_name: str,
              registry: Registry) -> VersionInfo:
    chosen, fp32 = built.chosen, built.variants[0]
    metrics = chosen.metrics() | {"fp32_perplexity": fp32.perplexity,
                                  "context_length": float(built.context_length)}
    return register_llm(model_cfg, chosen.folder, chosen.name, built.source.sha256, metrics,
                        run_id, f"{chosen.name} of pretrained {model_cfg.pretrained.model} "
                                f"(sha256 {built.source.sha256[:12]}) from run {run_name}",
                        registry)


def ask_chat(base_url: str, model: str, headers: dict[str, str],
             messages: list[tuple[str, str]], expect: str | None,
             max_tokens: int = 24) -> tuple[str, str]:
    """One chat completion at temperature 0: (the answer, a line saying it); a
    PipelineError when the answer lacks ``expect``."""
    url = f"{base_url}{chat_route()}"
    body = {"model": model, "messages": [{"role": r, "content": c} for r, c in messages],
            "max_tokens": max_tokens, "temperature": 0}
    reply = requests.post(url, json=body, timeout=120, headers=headers)
    if reply.status_code != 200:
        raise PipelineError(f"{url} answered {reply.status_code}: {reply.text[:500]}")
    answer = reply.json()["choices"][0]["message"]["content"]
    asked = messages[-1][1]
    if expect is not None and expect not in answer:
        raise PipelineError(f"{url}: asked {asked!r}, the served model answered "
                            f"{answer!r}, without {expect!r}")
    return answer, f"{asked!r} -> {answer.strip()!r}"


def run_llm(cfg: DeployConfig, model_cfg: ModelConfig, tracker: Tracker, registry: Registry,
            console: Console, run_suffix: str) -> ModelReport:
    """Build, measure, register, promote, serve and ask one pretrained language model."""
    name = model_cfg.name
    run_name = f"{name}-{run_suffix}"
    clock = StageClock(console, name)
    run_id = tracker.start(run_name, params=model_cfg.model_dump(mode="json"),
                           tags={"maas.model": name, "maas.source": "pretrained",
                                 "maas.task": "chat"})
    ok = False
    try:
        built = build_variants(model_cfg, cfg, clock)
        tracker.log_variants(run_id, built.variants, built.chosen.name)
        with clock.stage(2, "register") as stage:
            info = _register(model_cfg, built, run_id, run_name, registry)
            tracker.log_metrics(run_id, info.metrics)
            promoted, promotion = apply_promotion(model_cfg, info, registry)
            tracker.client.set_tag(run_id, "maas.registered_version", str(info.version))
            stage.result = (f"version {info.version} ({info.variant}, sha256 "
                            f"{info.sha256[:12]}, {len(info.assets)} assets); {promotion}")
        production, endpoint, answer = serve_and_ask(
            cfg, model_cfg, registry, clock, "ask",
            lambda url, headers: ask_chat(cfg.cluster.base_url, name, headers,
                                          [("user", SMOKE_QUESTION)], SMOKE_ANSWER))
        ok = True
        return ModelReport(
            name=name, kind=files.KIND, version=info.version, variant=info.variant,
            promoted=promoted, promotion=promotion,
            served_version=None if production is None else production.version,
            run_name=run_name,
            held_out={k: info.metrics[k] for k in ("perplexity", "token_agreement")},
            max_abs_diff=None, endpoint=endpoint, mlflow_run_id=run_id, example=SMOKE_QUESTION,
            served_answer=answer, stage_seconds=clock.seconds,
            variants=[VariantRow(name=v.name, selected=v is built.chosen, metrics=v.metrics())
                      for v in built.variants])
    finally:
        tracker.finish(run_id, ok)
