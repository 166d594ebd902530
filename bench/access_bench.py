"""What access costs on the hot path: the same model served with access off and on, one run.

    .venv/bin/python bench/access_bench.py [--seconds 5] [--rounds 4] [--proxy haproxy]
                                           [--usage-durable off|on]

One local Ray cluster (2 CPUs) serves two apps of the same model (the digits MLP of
bench/serve_bench.py, 2 replicas each): ``open`` with access off, ``gated`` with access on and
a key that has a rate limit (100000/s), a quota (10^9/month) and an accepted agreement, so
every check runs: key, scope, agreement, rate and quota leases, metering. Only one app takes
traffic at a time; the cells alternate open, gated, gated, open ... (``--rounds``) so drift
hits both (each round swaps which goes first). Prints and saves req/s and p50/p99 per cell
and the gated/open ratio, and updates bench/RESULTS.md. Target (issue 6): gated within 10%
of open, with the default (``access.usage_durable`` off with SQLite). ``--usage-durable on``
measures what each answer waiting for its usage row costs (its own section: the PostgreSQL
default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported

from results import update_section  # noqa: E402  (bench/results.py)
from serve_bench import _bodies, _export, _free_port, _load  # noqa: E402

SECTION = "Serving: access on vs off"
CELLS = ((1, 32), (64, 32))  # (rows per request, concurrent clients)
DURABLE = {"on": "access.usage_durable: each answer waits for its usage row",
           "off": "access.usage_durable off: usage written every usage_flush_s"}
TERMS = {"license": "MIT", "allowed_uses": ["benchmarking"]}


def _deploy(model: Path, state: Path, port: int, durable: bool):
    """Register ``model`` once and serve it as ``open`` (access off) and ``gated`` (on);
    return the two infer URLs and the gated key."""
    from maas.access import AccessStore, onboard, parse_quota
    from maas.config import parse_config
    from maas.registry import Registry
    from serve_apps.deploy import deploy_model, wait_for_version
    from maas.tracking import Tracker

    serve = {"num_replicas": 2}
    models = [{"name": "open", "serve": serve}, {"name": "gated", "serve": serve,
                                                 "agreement": TERMS}]
    base = {"state_dir": str(state), "cluster": {"http_port": port}, "models": models}
    open_cfg = parse_config(base | {"access": {"enabled": False}})
    gated_cfg = parse_config(base | {"access": {"usage_durable": durable}})
    run_id = Tracker(gated_cfg).start("access-bench", params={}, tags={})
    registry = Registry.from_config(gated_cfg)
    for name in ("open", "gated"):
        info = registry.register(name, model, run_id=run_id, metrics={}, variant="fp32",
                                 data_fingerprint="bench", config_digest="bench")
        registry.promote(name, info.version)
    store = AccessStore(gated_cfg.access_store)
    key, _, _ = onboard(store, [gated_cfg.model("gated")], "bench", "access_bench",
                        rate=100_000.0, quota=parse_quota("1000000000/month"))
    urls = {}
    for cfg, name in ((open_cfg, "open"), (gated_cfg, "gated")):
        urls[name] = deploy_model(cfg, cfg.model(name))
        wait_for_version(cfg, cfg.model(name), 1)
    return urls, key


def _measure(urls: dict[str, str], key: str, bodies: dict, seconds: float,
             rounds: int) -> list[dict]:
    """Every cell, open and gated in turn, ``rounds`` times."""
    rows: list[dict] = []
    for n, c in CELLS:
        for round_ in range(rounds):
            # Alternate which goes first, so that neither always follows the other.
            for label in ("open", "gated") if round_ % 2 == 0 else ("gated", "open"):
                headers = (f"Authorization: Bearer {key}",) if label == "gated" else ()
                result = _load(urls[label], bodies[n], c, seconds, headers)
                result |= {"access": label, "rows": n, "concurrency": c, "round": round_}
                print(f"{label:5s} rows={n:3d} c={c:3d} round {round_}: "
                      f"{result['req_per_s']:8.1f} req/s p50 {result['p50_ms']:.1f} ms "
                      f"p99 {result['p99_ms']:.1f} ms errors {result['errors']}", flush=True)
                rows.append(result)
    return rows


def _report(rows: list[dict], args: argparse.Namespace) -> list[str]:
    """The RESULTS.md section: a row per cell, the ratio against the target."""
    lines = [f"Command: `.venv/bin/python bench/access_bench.py --seconds {args.seconds:g} "
             f"--rounds {args.rounds} --proxy {args.proxy} --usage-durable "
             f"{args.usage_durable}`",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs. The same model as two "
             f"apps of 2 replicas each, measured in turn ({args.rounds} rounds, "
             f"{args.seconds:g} s each); gated: key with rate limit, quota and accepted "
             f"agreement, usage metered ({DURABLE[args.usage_durable]}). Raw: "
             f"bench/out/access_bench.json.", "",
             "| rows | clients | open req/s | gated req/s | gated/open | open p50/p99 ms | "
             "gated p50/p99 ms | errors |", "|---|---|---|---|---|---|---|---|"]
    ratios = []
    for n, c in CELLS:
        cell = {label: [r for r in rows if r["access"] == label and r["rows"] == n]
                for label in ("open", "gated")}
        rps = {label: mean(r["req_per_s"] for r in cell[label]) for label in cell}
        p50 = {label: mean(r["p50_ms"] for r in cell[label]) for label in cell}
        p99 = {label: mean(r["p99_ms"] for r in cell[label]) for label in cell}
        errors = sum(r["errors"] for label in cell for r in cell[label])
        ratios.append(rps["gated"] / rps["open"])
        lines.append(f"| {n} | {c} | {rps['open']:.0f} | {rps['gated']:.0f} | "
                     f"{ratios[-1]:.2f} | {p50['open']:.1f} / {p99['open']:.1f} | "
                     f"{p50['gated']:.1f} / {p99['gated']:.1f} | {errors} |")
    if args.usage_durable == "on":
        return lines + [
            "", "No target: this is what `access.usage_durable` costs (issue 20: a lost node "
            "must lose no answered request's usage). Each answer waits for a commit of the "
            "access store, shared with the answers waiting beside it; with a fixed number of "
            "clients, each waiting longer, fewer requests a second go through. Compare the "
            "section above (the same settings, usage written every second). Measured on the "
            "bench's SQLite store; on PostgreSQL, where it is the default, not measured here."]
    return lines + [
        "", f"Target (issue 6): access on within 10% of off: gated/open req/s "
            f"{', '.join(f'{r:.2f}' for r in ratios)} (>= 0.90) -> "
            f"{'met' if min(ratios) >= 0.90 else 'missed'}.", "",
        "How to read it: run to run, a cell moves by about 3% (an A/A run of this script "
        "with access off on both apps measured 0.96 and 1.01). What the gate costs a "
        "replica (py-spy at 200 Hz on a gated replica under this load): at first about 4% "
        "of its samples — the key's sha256 on every request, a lock and a dict update "
        "per metered request, and requests waiting on the limiter actor whenever a lease "
        "ran out (0.89-0.90x here). Now a verified Authorization header is remembered "
        "until its key changes, metering appends to a deque that the flush thread sums, "
        "and busy leases are topped up in the background before they run out."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=4, help="open/gated alternations per cell")
    parser.add_argument("--proxy", choices=["python", "haproxy"], default="haproxy")
    parser.add_argument("--usage-durable", choices=list(DURABLE), default="off",
                        help="access.usage_durable of the gated app (off: SQLite's default)")
    args = parser.parse_args()
    from maas.cluster import serve_env
    from maas.config import ClusterConfig

    os.environ.update(serve_env(ClusterConfig(serve_ingress=args.proxy)))
    import ray
    from ray import serve

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, splits = _export(folder)
        bodies = _bodies(splits, folder)
        port = _free_port()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(proxy_location="HeadOnly",
                        http_options={"host": "127.0.0.1", "port": port})
            urls, key = _deploy(model, folder / "state", port, args.usage_durable == "on")
            rows = _measure(urls, key, bodies, args.seconds, args.rounds)
        finally:
            serve.shutdown()
            ray.shutdown()
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "access_bench.json").write_text(json.dumps(rows, indent=2))
    lines = _report(rows, args)
    update_section(SECTION if args.usage_durable == "off" else f"{SECTION}, each answer "
                   "waiting for its usage row", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
