"""Serving throughput and latency: maas on Ray Serve vs plain FastAPI + uvicorn + ONNX Runtime.

    .venv/bin/python bench/serve_bench.py [--seconds 5] [--replicas 1]

One invocation, one model (the digits MLP shape: 64 -> 128 -> 64 -> 10, exported by maas),
the same Open Inference Protocol JSON body for both servers:
  (a) baseline: bench/baseline_server.py, one uvicorn process, ONNX Runtime in-process;
  (b) maas: a local Ray cluster (2 CPUs), the model registered in a temporary MLflow registry
      and served by serve_apps.inference behind Ray Serve's HTTP proxy.
Each is driven by bench/loadgen.py (a separate process) at concurrency 1, 32 and 128 with
1-row and 64-row requests. Prints and saves req/s, rows/s, p50/p99 and the maas/baseline
ratios (bench/out/serve_bench.json and .png) and updates bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported

from results import update_section  # noqa: E402  (bench/results.py)

SECTION = "Serving: maas vs FastAPI + uvicorn + ONNX Runtime"
CONCURRENCY = (1, 32, 128)
ROWS = (1, 64)
NAME = "bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _export(folder: Path) -> tuple[Path, object]:
    import torch

    from maas.config import DataConfig, ExportConfig, ModelArchConfig
    from maas.data import load_splits
    from maas.export import export_onnx
    from maas.models import model_for

    splits = load_splits(DataConfig())
    torch.manual_seed(0)
    model = model_for(ModelArchConfig(hidden=[128, 64]), splits).eval()
    return export_onnx(model, splits.n_features, folder / "model.onnx", ExportConfig()), splits


def _bodies(splits, folder: Path) -> dict[int, Path]:
    paths = {}
    for rows in ROWS:
        x = splits.x_test[:rows]
        path = folder / f"body{rows}.json"
        path.write_text(json.dumps({"inputs": [{"name": "input", "shape": list(x.shape),
                                                "datatype": "FP32", "data": x.ravel().tolist()}]}))
        paths[rows] = path
    return paths


def _load(url: str, body: Path, concurrency: int, seconds: float,
          headers: tuple[str, ...] = ()) -> dict:
    extra = [arg for header in headers for arg in ("--header", header)]
    done = subprocess.run([sys.executable, str(REPO / "bench" / "loadgen.py"), url, str(body),
                           "--concurrency", str(concurrency), "--seconds", str(seconds), *extra],
                          capture_output=True, text=True, check=True, timeout=seconds + 120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wait_http(url: str, timeout_s: float = 60) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.post(url, data=b"{}", timeout=2).status_code in (200, 400):
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def _sweep(label: str, url: str, bodies: dict[int, Path], seconds: float) -> list[dict]:
    out = []
    for rows in ROWS:
        for concurrency in CONCURRENCY:
            result = _load(url, bodies[rows], concurrency, seconds)
            result |= {"server": label, "rows": rows, "concurrency": concurrency,
                       "rows_per_s": result["req_per_s"] * rows}
            print(f"{label:8s} rows={rows:3d} c={concurrency:3d}: {result['req_per_s']:8.1f} req/s "
                  f"p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms "
                  f"errors {result['errors']}", flush=True)
            out.append(result)
    return out


def _baseline(model: Path, bodies: dict[int, Path], seconds: float) -> list[dict]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "bench" / "baseline_server.py"),
                               str(model), "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}/v2/models/m/infer"
        _wait_http(url)
        return _sweep("baseline", url, bodies, seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _maas(model: Path, state: Path, bodies: dict[int, Path], seconds: float,
          replicas: int) -> list[dict]:
    import ray
    from ray import serve

    from maas.config import ModelConfig, parse_config
    from maas.registry import Registry
    from serve_apps.deploy import deploy_model, wait_for_version
    from maas.tracking import Tracker

    port = _free_port()
    # Access off: this compares the serving path with a bare server; bench/access_bench.py
    # measures what the access gate adds.
    cfg = parse_config({"state_dir": str(state), "cluster": {"http_port": port},
                        "access": {"enabled": False}, "models": [{"name": NAME}]})
    run_id = Tracker(cfg).start("serve-bench", params={}, tags={})
    registry = Registry.from_config(cfg)
    info = registry.register(NAME, model, run_id=run_id, metrics={}, variant="fp32",
                             data_fingerprint="bench", config_digest="bench")
    registry.promote(NAME, info.version)
    model_cfg = ModelConfig(name=NAME, serve={"num_replicas": replicas})
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        url = deploy_model(cfg, model_cfg)
        wait_for_version(cfg, model_cfg, info.version)
        return _sweep("maas", url, bodies, seconds)
    finally:
        serve.shutdown()
        ray.shutdown()


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tput, tail) = plt.subplots(1, 2, figsize=(10, 4))
    for server in ("baseline", "maas"):
        for n in ROWS:
            points = [r for r in rows if r["server"] == server and r["rows"] == n]
            xs = [r["concurrency"] for r in points]
            style = "-o" if server == "maas" else "--s"
            tput.plot(xs, [r["rows_per_s"] for r in points], style, label=f"{server}, {n} row(s)")
            tail.plot(xs, [r["p99_ms"] for r in points], style, label=f"{server}, {n} row(s)")
    for axis, label in ((tput, "rows/s"), (tail, "p99 latency (ms)")):
        axis.set_xscale("log")
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    fig.suptitle("maas (Ray Serve) vs FastAPI + uvicorn + ORT, same model and body")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--replicas", type=int, default=2, help="maas replicas (2: one per core)")
    parser.add_argument("--proxy", choices=["python", "haproxy"], default="haproxy",
                        help="Ray Serve's ingress for maas (cluster.serve_ingress): its Python "
                             "proxy, or HAProxy straight to the replicas")
    args = parser.parse_args()
    # Read by Serve's controller and proxies when they start, i.e. at ray.init below.
    from maas.cluster import serve_env
    from maas.config import ClusterConfig

    os.environ.update(serve_env(ClusterConfig(
        serve_ingress="haproxy" if args.proxy == "haproxy" else "python")))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, splits = _export(folder)
        bodies = _bodies(splits, folder)
        rows = _baseline(model, bodies, args.seconds)
        rows += _maas(model, folder / "state", bodies, args.seconds, args.replicas)

    def get(server: str, n: int, c: int) -> dict:
        return next(r for r in rows if r["server"] == server and r["rows"] == n
                    and r["concurrency"] == c)

    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_bench.json").write_text(json.dumps(rows, indent=2))
    _plot(rows, out / "serve_bench.png")
    lines = [f"Command: `.venv/bin/python bench/serve_bench.py --seconds {args.seconds:g} "
             f"--replicas {args.replicas} --proxy {args.proxy}`",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs. Closed-loop clients "
             f"(bench/loadgen.py, aiohttp) for {args.seconds:g} s per cell after a 1 s warm-up; "
             f"maas: {args.replicas} replica(s), Serve ingress: {args.proxy}, dynamic batching "
             f"(max 16, no wait), access log off. Plot: bench/out/serve_bench.png.", "",
             "| rows | clients | baseline req/s | maas req/s | maas/baseline req/s | "
             "maas/baseline rows/s | baseline p50/p99 ms | maas p50/p99 ms | maas errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in ROWS:
        for c in CONCURRENCY:
            b, m = get("baseline", n, c), get("maas", n, c)
            lines.append(
                f"| {n} | {c} | {b['req_per_s']:.0f} | {m['req_per_s']:.0f} | "
                f"{m['req_per_s'] / b['req_per_s']:.2f} | {m['rows_per_s'] / b['rows_per_s']:.2f}"
                f" | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | {m['p50_ms']:.1f} / "
                f"{m['p99_ms']:.1f} | {m['errors']} |")
    single, wide = get("maas", 1, 32), get("maas", 64, 32)
    lines += ["", "Targets (issue 5): "
              f"single-row req/s at 32 clients {single['req_per_s'] / get('baseline', 1, 32)['req_per_s']:.2f}x "
              f"(>= 0.6); 64-row rows/s at 32 clients "
              f"{wide['rows_per_s'] / get('baseline', 64, 32)['rows_per_s']:.2f}x (>= 0.85); "
              f"p99 at 32 single-row clients {single['p99_ms']:.1f} ms (<= 40)."]
    update_section(SECTION, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
