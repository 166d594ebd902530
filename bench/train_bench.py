"""Ray Train (maas's loop) against hand-written DDP under torchrun, on the same work.

    .venv/bin/python bench/train_bench.py [--rows 60000] [--epochs 10]

In one run, on the synthetic source (same seed, so the same rows), an MLP [256, 128], Adam,
batch 256 per worker, a validation pass each epoch:
  (a) maas / Ray Train, 2 workers x 1 CPU, data from Ray Data shards;
  (b) torchrun, 2 processes, plain DDP (gloo), data in memory with a DistributedSampler;
  (c) maas / Ray Train, 1 worker.
Time per epoch is the median gap between consecutive epoch ends after the first (warm-up)
epoch; start-up (cluster, worker group, process group) is reported on its own line and kept
out of the ratios. Writes bench/out/train_bench.json and .png and its bench/RESULTS.md section.
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
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported

import ray  # noqa: E402
import ray.train  # noqa: E402

from jobs.train import run_training  # noqa: E402
from maas.config import parse_config  # noqa: E402
from maas.data import load_splits  # noqa: E402
from results import update_section  # noqa: E402  (bench/results.py)

SECTION = "Training: Ray Train vs torchrun DDP"
HIDDEN = [256, 128]
BATCH = 256


class EpochClock(ray.train.UserCallback):
    """Appends the time each epoch's reports arrive to a file (runs in the controller)."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"{time.time()}\n")


def _per_epoch(ends: list[float]) -> float:
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    return statistics.median(gaps)


def _model_cfg(rows: int, epochs: int, workers: int):
    return parse_config({"models": [{
        "name": "bench",
        "data": {"source": "synthetic", "synthetic": {"rows": rows, "features": 64}},
        "model": {"kind": "mlp", "hidden": HIDDEN, "dropout": 0.0},
        "train": {"workers": workers, "cpus_per_worker": 1, "epochs": epochs,
                  "batch_size": BATCH, "checkpoint_every": epochs, "max_failures": 0},
    }]}).models[0]


def run_ray(rows: int, epochs: int, workers: int, storage: Path) -> dict:
    model_cfg = _model_cfg(rows, epochs, workers)
    splits = load_splits(model_cfg.data)
    clock = storage / f"clock-{workers}.txt"
    started = time.time()
    run_training(model_cfg, splits, storage, f"bench-{workers}w", [EpochClock(str(clock))])
    ends = [float(line) for line in clock.read_text().split()]
    per_epoch = _per_epoch(ends)
    return {"per_epoch_s": per_epoch, "samples_per_s": len(splits.y_train) / per_epoch,
            "startup_s": ends[0] - started - per_epoch, "epochs": len(ends)}


def run_torchrun(rows: int, epochs: int, out: Path) -> dict:
    started = time.time()
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                    str(REPO / "bench" / "ddp_baseline.py"), "--rows", str(rows), "--epochs",
                    str(epochs), "--batch-size", str(BATCH), "--hidden", *map(str, HIDDEN),
                    "--out", str(out)], check=True, cwd=REPO)
    report = json.loads(out.read_text())
    per_epoch = _per_epoch(report["epoch_ends"])
    return {"per_epoch_s": per_epoch, "samples_per_s": report["train_rows"] / per_epoch,
            "startup_s": report["epoch_ends"][0] - started - per_epoch,
            "epochs": len(report["epoch_ends"])}


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["variants"])
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.bar(names, [report["variants"][n]["per_epoch_s"] for n in names])
    ax.set_ylabel("seconds per epoch (median)")
    ax.set_title(f"{report['train_rows']} rows, MLP {HIDDEN}, batch {BATCH}/worker")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start_s = time.time() - started
        variants = {
            "ray_train_2_workers": run_ray(args.rows, args.epochs, 2, Path(tmp)),
            "torchrun_2_processes": run_torchrun(args.rows, args.epochs, Path(tmp) / "ddp.json"),
            "ray_train_1_worker": run_ray(args.rows, args.epochs, 1, Path(tmp)),
        }
        ray.shutdown()

    base = variants["torchrun_2_processes"]["per_epoch_s"]
    report = {
        "rows": args.rows, "train_rows": int(args.rows * 0.8 * 0.9), "epochs": args.epochs,
        "machine": platform.platform(), "cpus": os.cpu_count(), "ray_cluster_start_s": ray_start_s,
        "variants": variants,
        "ratio_ray2_over_torchrun": variants["ray_train_2_workers"]["per_epoch_s"] / base,
        "ratio_ray1_over_ray2": (variants["ray_train_1_worker"]["per_epoch_s"]
                                 / variants["ray_train_2_workers"]["per_epoch_s"]),
    }
    (out / "train_bench.json").write_text(json.dumps(report, indent=2))
    _plot(report, out / "train_bench.png")
    lines = [f"Command: `.venv/bin/python bench/train_bench.py --rows {args.rows} "
             f"--epochs {args.epochs}`",
             f"Machine: {report['machine']}, {report['cpus']} CPUs. Synthetic data, "
             f"{report['train_rows']} training rows, MLP {HIDDEN}, batch {BATCH} per worker, "
             f"a validation pass per epoch; median of epochs 2..{args.epochs}.", "",
             "| variant | s / epoch | samples / s | start-up s (not in ratios) |",
             "|---|---|---|---|"]
    for name, v in variants.items():
        lines.append(f"| {name} | {v['per_epoch_s']:.3f} | {v['samples_per_s']:.0f} | "
                     f"{v['startup_s']:.1f} |")
    lines += ["", f"Ray cluster start (ray.init): {ray_start_s:.1f} s, on its own line.",
              f"**Ray Train 2 workers / torchrun 2 processes, per epoch: "
              f"{report['ratio_ray2_over_torchrun']:.2f}x** (target <= 1.10). "
              f"Ray Train 1 worker / 2 workers: {report['ratio_ray1_over_ray2']:.2f}x."]
    update_section(SECTION, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
