"""The optimize variants of the shipped digits MLP, measured side by side in one run.

    .venv/bin/python bench/optimize_bench.py [deploy.yaml] [--model digits] [--runs 2000]

Trains the model with its deploy.yaml settings on a local Ray cluster (Ray Train, as the
pipeline does, and the distilled student likewise), exports fp32 ONNX, builds every variant in
``optimize.variants`` and scores all
of them on the held-out rows: accuracy, file size, ONNX Runtime p50 at batch 1 and 64 (1 thread,
interleaved rounds). Writes bench/out/optimize_bench.json and .png and its RESULTS.md section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported

import ray  # noqa: E402

from jobs.train import run_training, train_student  # noqa: E402
from maas.config import load_config  # noqa: E402
from maas.data import load_splits  # noqa: E402
from maas.export import export_onnx  # noqa: E402
from maas.optimize import build_variants, select  # noqa: E402
from results import update_section  # noqa: E402  (bench/results.py)

SECTION = "Optimize: variants of the digits MLP"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in rows:
        ax.scatter(row["size_bytes"] / 1000, row["p50_ms"][64], s=60)
        ax.annotate(f"{row['name']} ({row['accuracy']:.3f})",
                    (row["size_bytes"] / 1000, row["p50_ms"][64]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("file size (kB)")
    ax.set_ylabel("p50 latency at batch 64 (ms)")
    ax.set_title("digits MLP variants (label: held-out accuracy)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _targets(by_name: dict) -> list[str]:
    """The issue's bars for the digits variants, each checked against this run's numbers."""
    base = by_name["fp32"]
    checks = []
    if "int8_static" in by_name:
        q = by_name["int8_static"]
        checks.append((f"int8_static size {q.size_ratio:.3f}x fp32 (target <= 0.30x), accuracy "
                       f"drop {q.accuracy_drop * 100:+.2f} pt (target <= 1)",
                       q.size_ratio <= 0.30 and q.accuracy_drop <= 0.01))
    if "prune_structured" in by_name:
        pr = by_name["prune_structured"]
        checks.append((f"prune_structured p50 at batch 64 {pr.p50_ms[64]:.4f} ms vs fp32 "
                       f"{base.p50_ms[64]:.4f} ms ({pr.p50_ms[64] / base.p50_ms[64]:.2f}x; "
                       f"target: faster)", pr.p50_ms[64] < base.p50_ms[64]))
    if "distill" in by_name:
        d = by_name["distill"]
        share = d.parameters / base.parameters
        checks.append((f"distill student {share:.2f}x the teacher's parameters (target <= 0.5x), "
                       f"accuracy drop {d.accuracy_drop * 100:+.2f} pt (target <= 2)",
                       share <= 0.5 and d.accuracy_drop <= 0.02))
    return [f"- {text}: {'met' if ok else 'MISSED'}" for text, ok in checks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(REPO / "deploy.yaml"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    cfg = load_config(args.config)
    model_cfg = cfg.model(args.model)
    optimize = model_cfg.optimize.model_copy(update={"latency_runs": args.runs})
    splits = load_splits(model_cfg.data, model_cfg.train.task, Path(args.config).parent)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_training(model_cfg, splits, Path(tmp) / "train", "optimize-bench", [])
        fp32 = export_onnx(outcome.model, splits.n_features, Path(tmp) / "fp32.onnx",
                           model_cfg.export)
        results = build_variants(
            outcome.model, fp32, splits, optimize, model_cfg.export, Path(tmp),
            model_cfg.train.seed,
            distill=lambda: train_student(model_cfg, splits, outcome.model, Path(tmp) / "train",
                                          "optimize-bench-student"))
        chosen = select(results, optimize).name
    ray.shutdown()

    rows = [r.as_row() for r in results]
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimize_bench.json").write_text(json.dumps({"selected": chosen, "variants": rows},
                                                        indent=2))
    _plot(rows, out / "optimize_bench.png")
    lines = [f"Command: `.venv/bin/python bench/optimize_bench.py deploy.yaml --model {args.model} "
             f"--runs {args.runs}`",
             f"Machine: {platform.platform()}. {len(splits.y_test)} held-out rows; latency is "
             f"ONNX Runtime p50 with 1 intra-op thread over {args.runs} calls in interleaved "
             f"rounds. Selection: {optimize.select.policy} at batch "
             f"{optimize.select.latency_batch} within {optimize.select.max_accuracy_drop} "
             f"accuracy of fp32.", "",
             "| variant | accuracy | drop | size kB | size / fp32 | p50 ms b=1 | p50 ms b=64 | "
             "nonzero params | |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.accuracy:.4f} | {r.accuracy_drop:+.4f} | "
                     f"{r.size_bytes / 1000:.1f} | {r.size_ratio:.3f}x | {r.p50_ms[1]:.4f} | "
                     f"{r.p50_ms[64]:.4f} | {'-' if r.parameters is None else r.parameters} | "
                     f"{'selected' if r.name == chosen else ''} |")
    lines += ["", *_targets({r.name: r for r in results})]
    update_section(SECTION, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
