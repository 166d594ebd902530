"""The pipeline of a ``source: pretrained`` model: export -> check -> register -> serve -> ask.

    python -m jobs.pipeline deploy.yaml     # runs this for every model with source: pretrained

Nothing is trained. The model's ONNX export must give sentence-transformers' own embeddings
(``pretrained.parity_cosine``) on a fixed sentence set, tokenized exactly as the replica will;
each ``optimize.variants`` entry is measured on the same set, and the one ``optimize.select``
picks among those at ``pretrained.min_cosine`` or better is registered with its tokenizer
(maas.embedder). The smoke request checks the served embedding against the reference too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import requests
from rich.console import Console

from jobs.stages import (ModelReport, PipelineError, StageClock, VariantRow, apply_promotion,
                         serve_and_ask)
from maas import embedder
from maas.config import DeployConfig, ModelConfig
from maas.oip import InferenceResponse, TensorSpec, text_request
from maas.pretrained import PretrainedError
from maas.registry import Registry, VersionInfo, config_hash
from maas.report import print_wide
from maas.variants import variants_table
from maas.text import KIND, OUTPUT_NAME, TEXT_INPUT, TOKENIZER_FILE, TOKENS_OUTPUT
from maas.tracking import Tracker

SMOKE_SENTENCE = 2  # of embedder.REFERENCE_SENTENCES: "What is the capital of France?"


def served_signature(dimension: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """What clients of a text embedder send and get: texts in, embeddings and counts out."""
    return ([TensorSpec(name=TEXT_INPUT, datatype="BYTES", shape=[-1])],
            [TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=[-1, dimension]),
             TensorSpec(name=TOKENS_OUTPUT, datatype="INT64", shape=[-1])])


def _register(model_cfg: ModelConfig, built: embedder.Built, run_id: str, run_name: str,
              registry: Registry) -> VersionInfo:
    chosen = built.chosen
    fp32 = next(v for v in built.variants if v.name == "fp32")
    metrics = chosen.metrics() | {"fp32_min_cosine": fp32.min_cosine,
                                  "embedding_dim": float(built.dimension),
                                  "max_length": float(built.max_length)}
    return registry.register(
        model_cfg.name, chosen.path, run_id=run_id, metrics=metrics, variant=chosen.name,
        data_fingerprint=built.fingerprint, config_digest=config_hash(model_cfg),
        description=f"{chosen.name} of pretrained {model_cfg.pretrained.model} from run "
                    f"{run_name}",
        kind=KIND, signature=served_signature(built.dimension),
        assets={TOKENIZER_FILE: built.tokenizer.encode()})


def _ask(endpoint: str, sentence: str, reference: np.ndarray, min_cosine: float,
         headers: dict[str, str]) -> tuple[float, str]:
    """POST one sentence as a BYTES tensor: (the served embedding's cosine with the
    reference, a line saying it)."""
    reply = requests.post(endpoint,
                          json=text_request([sentence], "smoke").model_dump(exclude_none=True),
                          timeout=60, headers=headers)
    if reply.status_code != 200:
        raise PipelineError(f"{endpoint} answered {reply.status_code}: {reply.text[:500]}")
    response = InferenceResponse.model_validate(reply.json())
    embedding = np.asarray(response.outputs[0].data, dtype=np.float32)
    cosine = float(embedder.cosines(embedding[None, :], reference[None, :])[0])
    if cosine < min_cosine:
        raise PipelineError(f"{endpoint}: the served embedding has cosine {cosine:.4f} with the "
                            f"reference, below pretrained.min_cosine {min_cosine}")
    return cosine, (f"{sentence!r}: {embedding.size} dimensions, cosine {cosine:.4f} with "
                    f"sentence-transformers (version {response.model_version})")


def _build(model_cfg: ModelConfig, folder: Path, clock: StageClock) -> embedder.Built:
    """Stage 1: export, check and measure; the variants table."""
    settings = model_cfg.pretrained
    with clock.stage(1, "export and check") as stage:
        try:
            built = embedder.build(settings, model_cfg.optimize, model_cfg.export.opset, folder,
                                   model_cfg.serve.ort_threads)
        except PretrainedError as exc:
            raise PipelineError(f"{model_cfg.name}: {exc}") from None
        print_wide(clock.console, variants_table(
            f"variants ({len(built.sentences)} sentences vs sentence-transformers, ONNX Runtime)",
            built.variants, built.chosen.name,
            lambda v: v.min_cosine >= settings.min_cosine), indent=6)
        stage.result = (f"{settings.model}: {built.dimension} dimensions, up to "
                        f"{built.max_length} tokens per text")
    return built


def run_pretrained(cfg: DeployConfig, model_cfg: ModelConfig, tracker: Tracker,
                   registry: Registry, console: Console, run_suffix: str) -> ModelReport:
    """Export, check, register, promote, serve and query one pretrained embedder."""
    name, settings = model_cfg.name, model_cfg.pretrained
    run_name = f"{name}-{run_suffix}"
    clock = StageClock(console, name)
    run_id = tracker.start(run_name, params=model_cfg.model_dump(mode="json"),
                           tags={"maas.model": name, "maas.source": "pretrained"})
    ok = False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            built = _build(model_cfg, Path(tmp), clock)
            tracker.log_variants(run_id, built.variants, built.chosen.name)
            with clock.stage(2, "register") as stage:
                info = _register(model_cfg, built, run_id, run_name, registry)
                tracker.log_metrics(run_id, info.metrics)
                promoted, promotion = apply_promotion(model_cfg, info, registry)
                tracker.client.set_tag(run_id, "maas.registered_version", str(info.version))
                stage.result = (f"version {info.version} ({info.variant}, sha256 "
                                f"{info.sha256[:12]}, tokenizer "
                                f"{info.assets[TOKENIZER_FILE].sha256[:12]}); {promotion}")
        sentence = built.sentences[SMOKE_SENTENCE]
        production, endpoint, answer = serve_and_ask(
            cfg, model_cfg, registry, clock, "ask",
            lambda url, headers: _ask(url, sentence, built.reference[SMOKE_SENTENCE],
                                      settings.min_cosine, headers))
        ok = True
        return ModelReport(
            name=name, kind=KIND, version=info.version, variant=info.variant, promoted=promoted,
            promotion=promotion, served_version=None if production is None else production.version,
            run_name=run_name,
            held_out={k: info.metrics[k] for k in ("min_cosine", "mean_cosine")},
            max_abs_diff=None, endpoint=endpoint, mlflow_run_id=run_id, example=sentence,
            served_answer=answer, stage_seconds=clock.seconds,
            variants=[VariantRow(name=v.name, selected=v is built.chosen, metrics=v.metrics())
                      for v in built.variants])
    finally:
        tracker.finish(run_id, ok)
