"""What the cluster exposes: every socket a Ray process of this machine listens on, by the
address it binds; Serve's HTTP port and the dashboard bound to 127.0.0.1 only; token auth
refusing a dashboard request and a GCS client that come without the token."""

import os
import subprocess
import sys
from collections import Counter

import psutil
import pytest
import requests

from maas.cluster import dashboard_url, ray_processes
from tests.conftest import session_token

pytestmark = pytest.mark.reliability


def _scope(ip: str) -> str:
    ip = ip.removeprefix("::ffff:")
    if ip.startswith("127.") or ip == "::1":
        return "loopback"
    return "all interfaces" if ip in ("0.0.0.0", "::") else "node IP"


def _listeners() -> list[tuple[str, int, str]]:
    """(bound address, port, process title) of every listening socket of a Ray process."""
    pids = {pid for pid, _ in ray_processes()}
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                title = psutil.Process(conn.pid).cmdline()[0]
            except (psutil.Error, IndexError):
                continue
            found.append((conn.laddr.ip, conn.laddr.port, os.path.basename(title)[:40]))
    return found


def test_ports_bind_where_they_should_and_token_auth_holds(serve_port, figures):
    import ray

    dashboard = dashboard_url()
    dashboard_port = int(dashboard.rsplit(":", 1)[1])
    listeners = _listeners()
    by_scope = Counter(_scope(ip) for ip, _, _ in listeners)
    wide = sorted({f"{title}:{port}" for ip, port, title in listeners if _scope(ip) != "loopback"})

    token = session_token()
    refused = requests.get(f"{dashboard}/api/version", timeout=10)
    allowed = requests.get(f"{dashboard}/api/version", timeout=10,
                           headers={"Authorization": f"Bearer {token}"})
    # A Ray client without the token: GCS answers InvalidAuthToken (the client retries, so
    # it is stopped after the first refusals are logged).
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import ray; ray.init(address="
             f"{ray.get_runtime_context().gcs_address!r})"],
            env=os.environ | {"RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
            timeout=8)
        gcs_said = probe.stdout + probe.stderr
    except subprocess.TimeoutExpired as exc:
        gcs_said = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()

    checks = {
        "Serve HTTP on loopback only": all(_scope(ip) == "loopback" for ip, port, _ in listeners
                                           if port == serve_port),
        "dashboard on loopback only": all(_scope(ip) == "loopback" for ip, port, _ in listeners
                                          if port == dashboard_port),
        "dashboard refuses no token": refused.status_code == 401,
        "dashboard takes the token": allowed.status_code == 200,
        "GCS refuses no token": "InvalidAuthToken" in gcs_said,
    }
    figures.append({"test": "what listens where", "fault": "a client on the network; a client "
                                                           "without the Ray token",
                    "load": f"{len(listeners)} listening sockets of Ray processes: "
                            f"{dict(by_scope)}; beyond loopback: {', '.join(wide)}",
                    "sent": len(checks), "failed": sum(not ok for ok in checks.values()),
                    "retries": 0, "recovery_s": 0.0, "command": "make test-reliability"})
    assert all(checks.values()), checks
    assert any(port == serve_port for _, port, _ in listeners), listeners
