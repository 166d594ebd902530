"""Serving throughput, tail latency and memory: maas as shipped vs the Python model servers.

    .venv/bin/python bench/serve_bench.py [--seconds 5] [--servers fastapi,mlserver,kserve,maas]
                                          [--loadgen wrk|aiohttp]

One invocation, one model (the digits MLP shape: 64 -> 128 -> 64 -> 10, exported by maas), the
same Open Inference Protocol JSON body for every server, one after another:
  fastapi:  bench/baseline_server.py, one uvicorn process, ONNX Runtime in-process;
  mlserver: MLServer 1.7.1, one process (parallel_workers 0), a custom ONNX Runtime runtime;
  kserve:   KServe 0.21.0 ModelServer, one worker, a custom ONNX Runtime predictor;
  maas:     a local Ray cluster and the model served as deploy.yaml ships the digits model
            (its serve section, cluster.serve_ingress, access on with a key as `maas
            quickstart` makes one), registered in a temporary MLflow registry.
The peers are pip-installed into their own venvs under bench/out (bench/peers.py), never into
the project's. Each server is driven by bench/loadgen.py (its own process; wrk by default,
see --loadgen) with 1-row and 64-row requests at 1, 8, 32 and 128 closed-loop clients.
Afterwards each server's memory is read from /proc. Ray Serve's own floor is measured in the
same cluster after maas: a replica whose app reads the body and answers ``{}``, at 1 and 32
clients. Prints and saves req/s, rows/s, p50/p99 and memory (bench/out/serve_bench.json and
.png) and, when every server ran, updates bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported

import peers  # noqa: E402  (bench/peers.py)
from results import update_section  # noqa: E402  (bench/results.py)

SECTION = "Serving: maas vs FastAPI, MLServer and KServe"
CONCURRENCY = (1, 8, 32, 128)
ROWS = (1, 64)
NAME = peers.NAME
SERVERS = ("fastapi", "mlserver", "kserve", "maas")
LABELS = {"fastapi": "FastAPI + uvicorn", "mlserver": peers.PEERS["mlserver"].label,
          "kserve": peers.PEERS["kserve"].label, "maas": "maas (as shipped)"}
FLOOR = "Ray Serve floor (an ASGI app that reads the body and answers {}, behind HAProxy)"


_free_port = peers.free_port  # also imported by the other benches


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


WARMUP_S = float(os.environ.get("MAAS_BENCH_WARMUP_S", "2"))  # per cell, every server
ENGINE = "wrk"  # the load generator's engine (bench/loadgen.py), set by --loadgen


def _load(url: str, body: Path, concurrency: int, seconds: float,
          headers: tuple[str, ...] = ()) -> dict:
    extra = [arg for header in headers for arg in ("--header", header)]
    done = subprocess.run([sys.executable, str(REPO / "bench" / "loadgen.py"), url, str(body),
                           "--concurrency", str(concurrency), "--seconds", str(seconds),
                           "--warmup", str(WARMUP_S), "--engine", ENGINE, *extra],
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


def _sweep(label: str, url: str, bodies: dict[int, Path], seconds: float,
           headers: tuple[str, ...] = ()) -> list[dict]:
    out = []
    for rows in ROWS:
        for concurrency in CONCURRENCY:
            result = _load(url, bodies[rows], concurrency, seconds, headers)
            result |= {"server": label, "rows": rows, "concurrency": concurrency,
                       "rows_per_s": result["req_per_s"] * rows}
            print(f"{label:8s} rows={rows:3d} c={concurrency:3d}: {result['req_per_s']:8.1f} "
                  f"req/s p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.1f} ms "
                  f"errors {result['errors']}", flush=True)
            out.append(result)
    return out


def _memory(pids: list[int]) -> dict:
    """Memory of each process (MiB): resident now and at its peak, and its proportional
    (PSS) and unique (USS) share, which leave out pages shared with other processes."""
    import psutil

    found = []
    for pid in pids:
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        full = psutil.Process(pid).memory_full_info()
        found.append({"pid": pid, "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
                      "peak_mib": int(fields["VmHWM"].split()[0]) / 1024,
                      "pss_mib": full.pss / 2**20, "uss_mib": full.uss / 2**20})
    return {"processes": found, **{key: max(p[key] for p in found)
                                   for key in ("rss_mib", "peak_mib", "pss_mib", "uss_mib")}}


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server that forks workers is measured whole)."""
    import psutil

    root = psutil.Process(pid)
    return [root.pid] + [child.pid for child in root.children(recursive=True)]


def _baseline(model: Path, bodies: dict[int, Path], seconds: float) -> tuple[list[dict], dict]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "bench" / "baseline_server.py"),
                               str(model), "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}/v2/models/m/infer"
        _wait_http(url)
        return _sweep("fastapi", url, bodies, seconds), _memory(_tree(server.pid))
    finally:
        server.terminate()
        server.wait(timeout=30)


def _peer(name: str, model: Path, folder: Path, bodies: dict[int, Path],
          seconds: float) -> tuple[list[dict], dict]:
    peer, port = peers.PEERS[name], _free_port()
    server = peers.start(peer, model, port, folder / name)
    try:
        peers.wait_ready(peer, server, port)
        rows = _sweep(name, peers.infer_url(peer, port), bodies, seconds)
        return rows, _memory(_tree(server.pid))
    finally:
        peers.stop(server)


def _shipped(state: Path, port: int):
    """deploy.yaml's cluster and access sections and its digits model's serve section and
    agreement, for a model named NAME, with its state in ``state``."""
    from maas.config import parse_config
    from maas.config.load import load_config

    shipped = load_config(REPO / "deploy.yaml")
    digits = shipped.model("digits")
    return parse_config({
        "state_dir": str(state),
        "cluster": shipped.cluster.model_dump() | {"http_port": port},
        "access": shipped.access.model_dump() | {"store": None, "payload_dir": None},
        "models": [{"name": NAME, "serve": digits.serve.model_dump(),
                    "agreement": digits.agreement.model_dump(exclude_unset=True)
                    if digits.agreement else None}]})


def _floor(port: int, body: Path, seconds: float) -> tuple[list[dict], dict]:
    """Ray Serve's own floor on the running cluster: a replica whose ASGI app reads the body
    and answers ``{}``, behind the same HAProxy and middleware, access log off (Serve's
    defaults otherwise), at 1 and 32 clients of the 1-row body; and that replica's memory."""
    import psutil
    from ray import serve

    class Empty:  # defined here: Serve pickles it by value, bench/ is not on the workers' path
        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http":
                return
            while (await receive()).get("more_body"):
                pass
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"), (b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"{}"})

    @serve.deployment(ray_actor_options={"num_cpus": 0.25},
                      logging_config={"enable_access_log": False, "log_level": "WARNING"})
    @serve.ingress(Empty())
    class Floor:
        pass

    serve.run(Floor.bind(), name="floor", route_prefix="/v2/models/floor")
    url = f"http://127.0.0.1:{port}/v2/models/floor/infer"
    rows = []
    for concurrency in (1, 32):
        result = _load(url, body, concurrency, seconds)
        rows.append(result | {"server": "floor", "rows": 1, "concurrency": concurrency})
        print(f"floor    rows=  1 c={concurrency:3d}: {result['req_per_s']:8.1f} req/s p50 "
              f"{result['p50_ms']:.2f} ms p99 {result['p99_ms']:.1f} ms", flush=True)
    replicas = [p.pid for p in psutil.process_iter(["cmdline"])
                if "ServeReplica:floor" in " ".join(p.info["cmdline"] or [])]
    return rows, _memory(replicas)


def _maas(model: Path, state: Path, bodies: dict[int, Path], seconds: float
          ) -> tuple[list[dict], dict]:
    import psutil
    import ray
    from ray import serve

    from maas.access import AccessStore, onboard
    from maas.cluster import serve_env
    from maas.registry import Registry
    from maas.tracking import Tracker
    from serve_apps.deploy import deploy_model, wait_for_version

    cfg = _shipped(state, _free_port())
    run_id = Tracker(cfg).start("serve-bench", params={}, tags={})
    registry = Registry.from_config(cfg)
    info = registry.register(NAME, model, run_id=run_id, metrics={}, variant="fp32",
                             data_fingerprint="bench", config_digest="bench")
    registry.promote(NAME, info.version)
    headers: tuple[str, ...] = ()
    if cfg.access.enabled:  # a key as `maas quickstart` makes one: no rate limit, no quota
        key, _, _ = onboard(AccessStore(cfg.access_store), list(cfg.models), "bench",
                            "serve_bench")
        headers = (f"Authorization: Bearer {key}",)
    # Read by Serve's controller, proxies and replicas when they start, as `maas up` sets it.
    os.environ.update(serve_env(cfg.cluster))
    ray.init(address="local", num_cpus=cfg.cluster.num_cpus, include_dashboard=False,
             log_to_driver=False)
    try:
        serve.start(proxy_location="HeadOnly",
                    http_options={"host": "127.0.0.1", "port": cfg.cluster.http_port})
        url = deploy_model(cfg, cfg.model(NAME))
        wait_for_version(cfg, cfg.model(NAME), info.version)
        rows = _sweep("maas", url, bodies, seconds, headers)
        replicas = [p.pid for p in psutil.process_iter(["cmdline"])
                    if f"ServeReplica:model-{NAME}" in " ".join(p.info["cmdline"] or [])]
        memory = _memory(replicas)
        floor_rows, memory["floor"] = _floor(cfg.cluster.http_port, bodies[1], seconds)
        return rows + floor_rows, memory
    finally:
        serve.shutdown()
        ray.shutdown()


def _plot(rows: list[dict], servers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for (i, n), (j, (key, label)) in ((a, b) for a in enumerate(ROWS) for b in enumerate(
            (("req_per_s", "requests/s"), ("p99_ms", "p99 latency (ms)")))):
        axis = axes[i][j]
        for server in servers:
            points = [r for r in rows if r["server"] == server and r["rows"] == n]
            axis.plot([r["concurrency"] for r in points], [r[key] for r in points],
                      "-o" if server == "maas" else "--s", label=LABELS[server])
        axis.set_xscale("log")
        axis.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        axis.set_xlabel("concurrent clients (closed loop)")
        axis.set_ylabel(f"{label}, {n} row(s) per request")
        axis.legend(fontsize=7)
    fig.suptitle("Same model, same OIP JSON body: maas (Ray Serve) vs Python model servers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _targets(get, memory: dict) -> list[str]:
    """Issue 18's targets for maas as shipped, each with the figures it compares."""
    m1, f1, ml1 = get("maas", 1, 32), get("fastapi", 1, 32), get("mlserver", 1, 32)
    m64, ml64, one = get("maas", 64, 32), get("mlserver", 64, 32), get("maas", 1, 1)
    checks = [
        ("1 row, 32 clients: req/s >= MLServer's", f"{m1['req_per_s']:,.0f} vs "
         f"{ml1['req_per_s']:,.0f}", m1["req_per_s"] >= ml1["req_per_s"]),
        ("1 row, 32 clients: req/s >= 0.75x FastAPI's", f"{m1['req_per_s']:,.0f} vs "
         f"{f1['req_per_s']:,.0f} = {m1['req_per_s'] / f1['req_per_s']:.2f}x",
         m1["req_per_s"] >= 0.75 * f1["req_per_s"]),
        ("64 rows, 32 clients: rows/s >= MLServer's", f"{m64['rows_per_s']:,.0f} vs "
         f"{ml64['rows_per_s']:,.0f}", m64["rows_per_s"] >= ml64["rows_per_s"]),
        ("1 row, 32 clients: p99 <= 1.5x FastAPI's", f"{m1['p99_ms']:.1f} ms vs "
         f"{f1['p99_ms']:.1f} ms = {m1['p99_ms'] / f1['p99_ms']:.2f}x",
         m1["p99_ms"] <= 1.5 * f1["p99_ms"]),
        ("64 rows, 32 clients: p99 <= MLServer's", f"{m64['p99_ms']:.1f} ms vs "
         f"{ml64['p99_ms']:.1f} ms", m64["p99_ms"] <= ml64["p99_ms"]),
        ("1 row, 1 client: p50 <= 0.6 ms", f"{one['p50_ms']:.2f} ms", one["p50_ms"] <= 0.6),
        ("a classic-model replica's resident memory <= 250 MiB",
         f"{memory['maas']['peak_mib']:.0f} MiB at its peak", memory["maas"]["peak_mib"] <= 250)]
    return [f"- {name}: {figures} -> {'met' if ok else 'missed'}"
            for name, figures, ok in checks]


def _report(rows: list[dict], memory: dict[str, dict], seconds: float) -> list[str]:
    """The RESULTS.md section: every cell of every server, memory, and the issue's targets."""
    def get(server: str, n: int, c: int) -> dict:
        return next(r for r in rows if r["server"] == server and r["rows"] == n
                    and r["concurrency"] == c)

    engine = "" if ENGINE == "wrk" else f" --loadgen {ENGINE}"
    lines = [f"Command: `.venv/bin/python bench/serve_bench.py --seconds {seconds:g}{engine}`",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs; run "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Closed-loop clients "
             f"(bench/loadgen.py, {ENGINE}, its own process) for {seconds:g} s per cell after a "
             f"{WARMUP_S:g} s warm-up. maas: deploy.yaml's digits serving settings, Serve "
             f"ingress HAProxy, access on (a key as `maas quickstart` makes one). Raw: "
             f"bench/out/serve_bench.json.", "",
             "![req/s and p99 against concurrent clients](serve_bench.png)", "",
             "req/s (p50 / p99 ms) per cell:", "",
             "| rows | clients | " + " | ".join(LABELS[s] for s in SERVERS) + " |",
             "|---|---|" + "---|" * len(SERVERS)]
    for n in ROWS:
        for c in CONCURRENCY:
            lines.append(f"| {n} | {c} | " + " | ".join(
                f"{r['req_per_s']:,.0f} ({r['p50_ms']:.2f} / {r['p99_ms']:.1f})"
                + (f", {r['errors']} errors" if r["errors"] else "")
                for r in (get(s, n, c) for s in SERVERS)) + " |")
    lines += ["", "Memory per process (a server's largest; maas: its model replica, without "
                  "HAProxy and Ray's own processes):", "",
              "| process | resident now (MiB) | peak | proportional (PSS) | unique (USS) |",
              "|---|---|---|---|---|"]
    for name, label in [(s, LABELS[s]) for s in SERVERS] + [("floor", FLOOR)]:
        m = memory["maas"]["floor"] if name == "floor" else memory[name]
        lines.append(f"| {label} | {m['rss_mib']:.0f} | {m['peak_mib']:.0f} | "
                     f"{m['pss_mib']:.0f} | {m['uss_mib']:.0f} |")
    f1, f32 = get("floor", 1, 1), get("floor", 1, 32)
    lines += ["", f"{FLOOR}, measured in the same cluster after maas: 1 client p50 "
                  f"{f1['p50_ms']:.2f} ms; 32 clients {f32['req_per_s']:,.0f} req/s, p99 "
                  f"{f32['p99_ms']:.1f} ms.", "", "Targets (issue 18), maas as shipped:", ""]
    return lines + _targets(get, memory)


def main() -> None:
    global ENGINE
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated subset; RESULTS.md is updated only with all")
    parser.add_argument("--loadgen", choices=("wrk", "aiohttp"), default=ENGINE,
                        help="the load generator's engine (bench/loadgen.py)")
    args = parser.parse_args()
    ENGINE = args.loadgen
    servers = [s for s in SERVERS if s in args.servers.split(",")]
    rows, memory = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, splits = _export(folder)
        bodies = _bodies(splits, folder)
        for server in servers:
            if server == "fastapi":
                found, memory[server] = _baseline(model, bodies, args.seconds)
            elif server == "maas":
                found, memory[server] = _maas(model, folder / "state", bodies, args.seconds)
            else:
                found, memory[server] = _peer(server, model, folder, bodies, args.seconds)
            rows += found
            print(f"{server}: resident {memory[server]['rss_mib']:.0f} MiB, peak "
                  f"{memory[server]['peak_mib']:.0f} MiB", flush=True)
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_bench.json").write_text(json.dumps({"rows": rows, "memory": memory},
                                                     indent=2))
    _plot(rows, servers, out / "serve_bench.png")
    if servers == list(SERVERS):  # the plot RESULTS.md shows, kept beside it
        _plot(rows, servers, REPO / "bench" / "serve_bench.png")
        lines = _report(rows, memory, args.seconds)
        update_section(SECTION, lines)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
