"""ONNX Runtime's spin-wait (``serve.ort_spin``): what it buys on idle cores, what it costs a
stream on busy ones.

    .venv/bin/python bench/spin_bench.py [--runs 3] [--busy 2] [--streams 12]
                                         [--ingress haproxy|python] [--no-engine]

SmolLM2-135M-Instruct int4 throughout, built into bench/out/llm-cache as bench/llm_bench.py
builds it. Two measurements:

- ``engine``: maas's engine in this process (2 ORT threads, continuous batching up to 16),
  output tokens/s for 1, 4 and 16 concurrent prompts of 64 greedy tokens, spinning off and
  on, first on idle cores and then beside ``--busy`` busy loops (other processes wanting the
  cores, as other replicas, the proxy and clients do); cells interleaved, medians of ``--runs``.
- ``delivery``: the model served twice on one local Ray cluster (``smollm2`` spinning off,
  ``smollm2-spin`` on; 0.5 CPU and 2 ORT threads each) behind ``--ingress`` (HAProxy, the
  shipped default, or Serve's Python proxy, which the test sessions use), beside ``--busy``
  busy loops; for
  each, ``--streams`` answers of up to 160 tokens streamed from /v1/chat/completions and read
  with requests, each chunk timed as it is read. Per stream: when the first and the last
  chunk arrived, and whether it passed tests/integration/test_llm.py's check (the chunks
  spread over at least a third of the time, a quarter of them in the first three quarters).

Prints a table; writes bench/out/spin_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.llm_bench import CACHE, QUESTIONS, SOURCE, THREADS, _free_port  # noqa: E402

OUT = REPO / "bench" / "out" / "spin_bench.json"
STREAMS = (1, 4, 16)
COUNTING = "Count from 1 to 60, separated by commas."


@contextmanager
def busy(loops: int):
    """``loops`` processes that each want a whole core, for as long as the block runs. Each
    in a session of its own: Linux shares the cores between sessions first (autogroups), and
    Ray's workers run at nice 15 within theirs, so a loop in the bench's own session (which
    ``ray.init`` puts Ray in) would starve them outright instead of sharing the cores."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
             for _ in range(loops)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def engine_rate(model, streams: int) -> float:
    """Output tokens/s of ``streams`` prompts submitted together, 64 greedy tokens each."""
    from maas.llm.sampling import SamplingParams

    finished, counts = threading.Semaphore(0), []

    def sink(output) -> None:
        if output.finish_reason is not None:
            counts.append(output.completion_tokens)
            finished.release()

    started = time.perf_counter()
    for index in range(streams):
        prompt = model.chat_prompt([("user", QUESTIONS[index % len(QUESTIONS)])])
        model.engine.submit(prompt, SamplingParams(max_tokens=64, temperature=0), sink)
    for _ in range(streams):
        finished.acquire()
    return sum(counts) / (time.perf_counter() - started)


def engine_cells(folder: Path, runs: int, loops: int) -> list[dict]:
    """Every (spin, busy loops, streams) cell ``runs`` times, interleaved."""
    from maas.config.serve import LLMServeConfig
    from maas.llm.chat import ChatModel

    models = {spin: ChatModel.open(folder, LLMServeConfig(max_num_seqs=16), THREADS, spin)
              for spin in (False, True)}
    for model in models.values():
        engine_rate(model, max(STREAMS))  # warm-up
    cells = []
    for load in (0, loops):
        with busy(load):
            for run in range(runs):
                for streams in STREAMS:
                    for spin in ((False, True) if run % 2 == 0 else (True, False)):
                        rate = engine_rate(models[spin], streams)
                        cells.append({"spin": spin, "busy": load, "streams": streams,
                                      "run": run, "tok_s": rate})
                        print(f"engine spin={spin!s:5} busy={load} x{streams:2d}: "
                              f"{rate:6.1f} tok/s", flush=True)
    for model in models.values():
        model.engine.close()
    return cells


def read_stream(base: str, key: str, model: str) -> list[float]:
    """Seconds from sending to reading each content chunk of one streamed answer."""
    import requests

    body = {"model": model, "messages": [{"role": "user", "content": COUNTING}],
            "temperature": 0, "max_tokens": 160, "stream": True}
    started, arrivals = time.monotonic(), []
    with requests.post(f"{base}/v1/chat/completions", json=body, stream=True, timeout=120,
                       headers={"Authorization": f"Bearer {key}"}) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"]:
                arrivals.append(time.monotonic() - started)
    return arrivals


def streamed(arrivals: list[float]) -> bool:
    """tests/integration/test_llm.py's check that a stream was not held back."""
    first, last = arrivals[0], arrivals[-1]
    early = sum(t < last - (last - first) / 4 for t in arrivals)
    return len(arrivals) > 5 and last - first > last / 3 and early >= len(arrivals) / 4


def stand_up(state: Path) -> tuple[str, str]:
    """Both copies through maas's pipeline on this process's Ray cluster; (base URL, key)."""
    from rich.console import Console

    from jobs.pipeline import run_pipeline
    from maas.access import AccessStore, onboard
    from maas.config import parse_config

    def model(name: str, spin: bool) -> dict:
        return {"name": name, "source": "pretrained",
                "pretrained": {"model": SOURCE, "task": "chat"},
                "optimize": {"variants": ["int4"]},
                "serve": {"cpus_per_replica": 0.5, "ort_threads": THREADS, "ort_spin": spin,
                          "llm": {"max_num_seqs": 8, "context_length": 1024}},
                "agreement": {"license": "Apache-2.0", "allowed_uses": ["benchmarking"]}}

    cfg = parse_config({"state_dir": str(state), "cluster": {"http_port": _free_port()},
                        "models": [model("smollm2", False), model("smollm2-spin", True)]})
    cache = cfg.state_path / "cache" / "llm"  # the bench's own build cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.symlink_to(CACHE.resolve(), target_is_directory=True)
    run_pipeline(cfg, Console(stderr=True, soft_wrap=True))
    key, _, _ = onboard(AccessStore(cfg.access_store), cfg.models, "bench", "spin_bench")
    return cfg.cluster.base_url, key


def delivery(streams: int, loops: int, ingress: str) -> list[dict]:
    """``streams`` answers from each copy, alternating, beside ``loops`` busy loops."""
    from maas.cluster import serve_env
    from maas.config import ClusterConfig

    # Read when Serve starts, at ray.init.
    os.environ.update(serve_env(ClusterConfig(serve_ingress=ingress)))
    import ray
    from ray import serve

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            base, key = stand_up(Path(tmp) / "state")
            for model in ("smollm2", "smollm2-spin"):
                read_stream(base, key, model)  # warm-up
            with busy(loops):
                for index in range(streams):
                    for model in ("smollm2", "smollm2-spin"):
                        arrivals = read_stream(base, key, model)
                        rows.append({"spin": model.endswith("spin"), "busy": loops,
                                     "ingress": ingress,
                                     "chunks": len(arrivals), "first_s": arrivals[0],
                                     "last_s": arrivals[-1], "streamed": streamed(arrivals)})
                        print(f"delivery {model:13s} #{index}: first {arrivals[0]:.2f} s, "
                              f"last {arrivals[-1]:.2f} s, streamed {rows[-1]['streamed']}",
                              flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    return rows


def summary(engine: list[dict], streams: list[dict]) -> list[str]:
    lines = ["| measure | busy loops | spin off | spin on | on ÷ off |", "|---|---|---|---|---|"]
    ingress = streams[0]["ingress"]
    for load in sorted({c["busy"] for c in engine}):
        for count in STREAMS:
            off, on = (statistics.median(c["tok_s"] for c in engine if c["spin"] is spin
                                         and c["busy"] == load and c["streams"] == count)
                       for spin in (False, True))
            lines.append(f"| engine tok/s, {count} streams | {load} | {off:.1f} | {on:.1f} | "
                         f"{on / off:.2f}x |")
    loops, total = streams[0]["busy"], len(streams) // 2
    off, on = (sum(r["streamed"] for r in streams if r["spin"] is spin) for spin in (False, True))
    lines.append(f"| streams that streamed ({ingress}) | {loops} | {off} of {total} | {on} of "
                 f"{total} | |")
    for key in ("first_s", "last_s"):
        off, on = (statistics.median(r[key] for r in streams if r["spin"] is spin)
                   for spin in (False, True))
        lines.append(f"| median {key[:-2]} chunk read ({ingress}), s | {loops} | {off:.2f} | "
                     f"{on:.2f} | {on / off:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="engine runs; medians of these")
    parser.add_argument("--busy", type=int, default=2, help="busy loops beside the engine")
    parser.add_argument("--streams", type=int, default=12, help="streamed answers per copy")
    parser.add_argument("--ingress", choices=("haproxy", "python"), default="haproxy",
                        help="Serve's ingress for the delivery measurement")
    parser.add_argument("--no-engine", action="store_true", help="leave out the engine cells")
    args = parser.parse_args()
    from maas.llm.convert import require_llm_extra, resolve_source, variant_dir

    require_llm_extra()
    folder, _ = variant_dir(resolve_source(SOURCE), "int4", CACHE)
    engine = [] if args.no_engine else engine_cells(folder, args.runs, args.busy)
    streams = delivery(args.streams, args.busy, args.ingress)
    lines = summary(engine, streams)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                               "args": vars(args), "load_average_after": os.getloadavg(),
                               "engine": engine, "delivery": streams, "table": lines},
                              indent=2))
    print("\n".join(lines))
    print(f"every figure: {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
