"""Figures of the reliability tests: each test adds a row; ``make reliability-report`` writes
them into RELIABILITY.md (plain ``make test`` leaves the file alone)."""

import os
from pathlib import Path

import pytest

from tests.reliability.nodes import WorkerNode

REPO = Path(__file__).resolve().parents[2]
MB = 2**20


def serve_rss_mb(app: str) -> dict[str, int]:
    """Resident MB of Serve's proxy and of ``app``'s replica(s), summed by kind: those of this
    session's cluster only (another session may run its own beside it)."""
    import psutil
    from ray.util.state import list_actors

    ours = {a.pid for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)}
    seen = {"ProxyActor": 0, "ServeReplica": 0}
    for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        if proc.info["pid"] not in ours:
            continue
        # A Ray worker's title names the method it is running (ProxyActor.receive_asgi_messages)
        title = (proc.info["cmdline"] or [""])[0]
        kind = title.removeprefix("ray::").split(".")[0].split(":")[0]
        if kind == "ProxyActor" or title.startswith(f"ray::ServeReplica:{app}:"):
            seen[kind] += proc.info["memory_info"].rss // MB
    return seen


def rss_growth(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """MB each kind of process grew between two ``serve_rss_mb`` readings."""
    return {kind: after[kind] - mb for kind, mb in before.items()}


@pytest.fixture
def worker_node(serve_port, tmp_path):
    node = WorkerNode(tmp_path)  # it joins the head's temp dir, and records its cluster there
    yield node
    node.kill()


@pytest.fixture(scope="session")
def figures():
    rows: list[dict] = []
    yield rows
    if rows and os.environ.get("MAAS_RELIABILITY_REPORT") == "1":
        import sys

        sys.path.insert(0, str(REPO / "bench"))
        from results import update_section

        lines = ["Written by `make reliability-report` (tests/reliability) on this machine: "
                 "2 CPUs, one local Ray cluster, Serve's python proxy.", "",
                 "| test | fault | load | requests sent | failed | retries | "
                 "recovery s | command |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['test']} | {r['fault']} | {r['load']} | {r['sent']} | "
                         f"{r['failed']} ({100 * r['failed'] / max(1, r['sent']):.2f}%) | "
                         f"{r['retries']} | {r['recovery_s']:.1f} | `{r['command']}` |")
        update_section("Measured", lines, REPO / "RELIABILITY.md")
