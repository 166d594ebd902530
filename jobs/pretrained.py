"""The pipeline of a ``source: pretrained`` model: export -> check -> register -> serve -> ask.

    python -m jobs.pipeline deploy.yaml     # runs this for every model with source: pretrained

Nothing is trained. The model's ONNX export must give sentence-transformers' own embeddings
(``pretrained.parity_cosine``) on a fixed sentence set, tokenized exactly as the replica will;
each ``optimize.variants`` entry is measured on the same set, and the one ``optimize.select``
picks among those at ``pretrained.min_cosine`` or better is registered with its tokenizer.
The smoke request checks the served embedding against the reference too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import requests
from rich.console import Console
from rich.table import Table

from jobs.pipeline import (ModelReport, PipelineError, _apply_promotion, _stage, embedding_body,
                           serve_and_ask)
from maas import pretrained
from maas.config import DeployConfig, ModelConfig
from maas.oip import InferenceResponse, TensorSpec
from maas.registry import Registry, config_hash
from maas.text import KIND, TEXT_INPUT, TOKENIZER_FILE, TOKENS_OUTPUT
from maas.tracking import Tracker

SMOKE_SENTENCE = 2  # of pretrained.REFERENCE_SENTENCES: "What is the capital of France?"


def served_signature(dimension: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """What clients of a text embedder send and get: texts in, embeddings and counts out."""
    return ([TensorSpec(name=TEXT_INPUT, datatype="BYTES", shape=[-1])],
            [TensorSpec(name="embedding", datatype="FP32", shape=[-1, dimension]),
             TensorSpec(name=TOKENS_OUTPUT, datatype="INT64", shape=[-1])])


def _variants_table(built: pretrained.Built) -> Table:
    table = Table(title=f"variants ({len(built.sentences)} reference sentences, ONNX Runtime, "
                        f"tokenization included)")
    for column in ("variant", "min cosine", "mean cosine", "size MB", "p50 ms b=1",
                   "p50 ms b=32", ""):
        table.add_column(column)
    for v in built.variants:
        table.add_row(v.name, f"{v.min_cosine:.4f}", f"{v.mean_cosine:.5f}",
                      f"{v.size_bytes / 2**20:.1f}", f"{v.p50_ms[1]:.1f}", f"{v.p50_ms[32]:.1f}",
                      "selected" if v is built.chosen else "")
    return table


def _register(model_cfg: ModelConfig, built: pretrained.Built, run_id: str, run_name: str,
              registry: Registry):
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
         console: Console, headers: dict[str, str]) -> float:
    """POST one sentence as a BYTES tensor; the served embedding's cosine with the reference."""
    reply = requests.post(endpoint, json=embedding_body([sentence]), timeout=60, headers=headers)
    if reply.status_code != 200:
        raise PipelineError(f"{endpoint} answered {reply.status_code}: {reply.text[:500]}")
    response = InferenceResponse.model_validate(reply.json())
    embedding = np.asarray(response.outputs[0].data, dtype=np.float32)
    cosine = float(pretrained.cosines(embedding[None, :], reference[None, :])[0])
    console.print(f"    {sentence!r}: {embedding.size} dimensions, cosine {cosine:.4f} with "
                  f"sentence-transformers (model {response.model_name} version "
                  f"{response.model_version})", highlight=False)
    if cosine < min_cosine:
        raise PipelineError(f"{endpoint}: the served embedding has cosine {cosine:.4f} with the "
                            f"reference, below pretrained.min_cosine {min_cosine}")
    return cosine


def run_pretrained(cfg: DeployConfig, model_cfg: ModelConfig, tracker: Tracker,
                   registry: Registry, console: Console, run_suffix: str) -> ModelReport:
    """Export, check, register, promote, serve and query one pretrained embedder."""
    name, settings = model_cfg.name, model_cfg.pretrained
    run_name = f"{name}-{run_suffix}"
    run_id = tracker.start(run_name, params=model_cfg.model_dump(mode="json"),
                           tags={"maas.model": name, "maas.source": "pretrained"})
    ok = False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            with _stage(console, 1, f"export pretrained {settings.model} to ONNX and check it "
                                    f"against sentence-transformers"):
                try:
                    built = pretrained.build(settings, model_cfg.optimize,
                                             model_cfg.export.opset, Path(tmp),
                                             model_cfg.serve.ort_threads)
                except pretrained.PretrainedError as exc:
                    raise PipelineError(f"{name}: {exc}") from None
                console.print(f"    {built.model_dir}: {built.dimension} dimensions, up to "
                              f"{built.max_length} tokens per text", highlight=False)
                Console(width=max(console.width, 120), file=console.file).print(
                    _variants_table(built))
                tracker.log_variants(run_id, [{"name": v.name} | v.metrics()
                                              for v in built.variants], built.chosen.name)
            with _stage(console, 2, f"register {name} ({built.chosen.name}) with its tokenizer"):
                info = _register(model_cfg, built, run_id, run_name, registry)
                tracker.log_metrics(run_id, info.metrics)
                console.print(f"    registered {name} version {info.version} "
                              f"({info.variant}, sha256 {info.sha256[:12]}, tokenizer "
                              f"{info.assets[TOKENIZER_FILE].sha256[:12]}) in {registry.uri}",
                              highlight=False)
                promoted, promotion = _apply_promotion(model_cfg, info, registry, console)
                tracker.client.set_tag(run_id, "maas.registered_version", str(info.version))

        sentence = built.sentences[SMOKE_SENTENCE]
        production, endpoint, answer = serve_and_ask(
            cfg, model_cfg, registry, console, "embed one sentence at",
            lambda url, headers: _ask(url, sentence, built.reference[SMOKE_SENTENCE],
                                      settings.min_cosine, console, headers))
        ok = True
        return ModelReport(
            name=name, version=info.version, variant=info.variant, promoted=promoted,
            promotion=promotion, served_version=None if production is None else production.version,
            run_name=run_name,
            held_out={k: info.metrics[k] for k in ("min_cosine", "mean_cosine")},
            max_abs_diff=None,
            endpoint=endpoint, mlflow_run_id=run_id, example_row=sentence,
            served_answer=answer, kind=KIND)
    finally:
        tracker.finish(run_id, ok)
