"""Does exporting to ONNX pay off? torch eager vs ONNX Runtime on the model deploy.yaml serves.

    .venv/bin/python bench/export_bench.py [deploy.yaml]      # or: make bench

Both engines run the same network (the first model's architecture, standardisation and
softmax/argmax head included), in this process, one after the other, with one thread each
(a serve replica's setting), after a warm-up. Latency is per call; the ratio is torch / ORT, so
> 1 means ONNX Runtime is faster. Weights do not change the arithmetic, so no training is needed.
Writes bench/out/export_bench.json and .png, and rewrites its section of bench/RESULTS.md.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import update_section  # noqa: E402  (bench/results.py, beside this script)

from maas.config import load_config  # noqa: E402
from maas.data import load_splits  # noqa: E402
from maas.export import export_onnx  # noqa: E402
from maas.runtime import ort_session  # noqa: E402
from maas.models import Classifier, model_for  # noqa: E402

BATCHES = (1, 64)
CALLS = 2000
WARMUP = 200
SECTION = "ONNX export: torch eager vs ONNX Runtime"


def _percentiles(fn, x: np.ndarray) -> dict[str, float]:
    for _ in range(WARMUP):
        fn(x)
    samples = np.empty(CALLS)
    for i in range(CALLS):
        started = time.perf_counter_ns()
        fn(x)
        samples[i] = (time.perf_counter_ns() - started) / 1e3
    return {"p50_us": float(np.percentile(samples, 50)), "p99_us": float(np.percentile(samples, 99))}


def run(config_path: Path) -> dict:
    torch.set_num_threads(1)
    model_cfg = load_config(config_path).models[0]
    splits = load_splits(model_cfg.data, model_cfg.train.task, config_path.parent)
    model = model_for(model_cfg.model, splits).eval()
    wrapped = Classifier(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, splits.n_features, Path(tmp) / "m.onnx", model_cfg.export)
        session = ort_session(onnx_path, threads=1)

        def torch_call(x: np.ndarray) -> None:
            with torch.inference_mode():
                wrapped(torch.from_numpy(x))

        def ort_call(x: np.ndarray) -> None:
            session.run(None, {"input": x})

        rows = []
        for batch in BATCHES:
            x = np.ascontiguousarray(np.resize(splits.x_test, (batch, splits.n_features)))
            torch_stats, ort_stats = _percentiles(torch_call, x), _percentiles(ort_call, x)
            rows.append({"batch": batch, "torch": torch_stats, "onnxruntime": ort_stats,
                         "p50_ratio_torch_over_ort": torch_stats["p50_us"] / ort_stats["p50_us"]})
    return {"model": model_cfg.name, "hidden": model_cfg.model.hidden, "calls": CALLS,
            "threads": 1, "torch": torch.__version__, "machine": platform.platform(),
            "results": rows}


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"batch {r['batch']}" for r in report["results"]]
    xs = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(xs - 0.2, [r["torch"]["p50_us"] for r in report["results"]], 0.4, label="torch eager")
    ax.bar(xs + 0.2, [r["onnxruntime"]["p50_us"] for r in report["results"]], 0.4,
           label="ONNX Runtime")
    ax.set_xticks(xs, labels)
    ax.set_ylabel("p50 latency per call (µs)")
    ax.set_title(f"{report['model']}: torch vs ONNX Runtime, 1 thread")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _result_lines(report: dict) -> list[str]:
    lines = ["Command: `.venv/bin/python bench/export_bench.py deploy.yaml` (or `make bench`)",
             f"Machine: {report['machine']}; torch {report['torch']}; {report['calls']} calls "
             f"per cell after warm-up; 1 thread each.", "",
             "| batch | torch p50 µs | torch p99 µs | ORT p50 µs | ORT p99 µs | torch / ORT (p50) |",
             "|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['batch']} | {r['torch']['p50_us']:.1f} | {r['torch']['p99_us']:.1f} | "
                     f"{r['onnxruntime']['p50_us']:.1f} | {r['onnxruntime']['p99_us']:.1f} | "
                     f"{r['p50_ratio_torch_over_ort']:.2f}x |")
    return lines


def main() -> None:
    config = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "deploy.yaml"
    report = run(config)
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_bench.json").write_text(json.dumps(report, indent=2))
    _plot(report, out / "export_bench.png")
    update_section(SECTION, _result_lines(report))
    for r in report["results"]:
        print(f"batch {r['batch']:>3}: torch p50 {r['torch']['p50_us']:8.1f} us   "
              f"ORT p50 {r['onnxruntime']['p50_us']:8.1f} us   "
              f"torch/ORT {r['p50_ratio_torch_over_ort']:.2f}x")
    print(f"wrote {out / 'export_bench.json'}, {out / 'export_bench.png'}, bench/RESULTS.md")


if __name__ == "__main__":
    main()
