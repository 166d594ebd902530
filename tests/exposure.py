"""What a client on the network gets from this machine's Ray processes: every port they listen
on, tried from the machine's own non-loopback address (as another machine would reach it).

Used by tests/reliability/test_exposure.py (the test session's head) and tests/e2e (the head
`maas up` starts, after the demo's traffic)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil
import requests

from maas.cluster import ray_processes


def scope(ip: str) -> str:
    ip = ip.removeprefix("::ffff:")
    if ip.startswith("127.") or ip == "::1":
        return "loopback"
    return "all interfaces" if ip in ("0.0.0.0", "::") else "node IP"


def listeners() -> list[tuple[str, int, str]]:
    """(bound address, port, process title) of every listening socket of a Ray process (and
    of what Ray started beside them, such as Serve's HAProxy)."""
    pids = {pid for pid, _ in ray_processes()}
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN or conn.pid is None:
            continue
        try:
            proc = psutil.Process(conn.pid)
            ours = conn.pid in pids or proc.name() == "haproxy" and proc.ppid() in pids
            title = proc.cmdline()[0] if ours else ""
        except (psutil.Error, IndexError):
            continue
        if ours:
            found.append((conn.laddr.ip, conn.laddr.port, os.path.basename(title)[:40]))
    return found


def machine_ip() -> str | None:
    """An IPv4 address of this machine that is not loopback (None on a machine without)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


@dataclass(frozen=True)
class Answer:
    port: int
    title: str
    status: int  # HTTP status of GET /metrics; 0: connected, but no HTTP answer
    tenant_data: bool  # the body names a tenant, or carries a tenant label


def from_the_network(ip: str, tenants: list[str]) -> list[Answer]:
    """Every Ray port reachable at ``ip``, with what a GET /metrics without credentials got
    there. A port bound to loopback only refuses the connection and is not listed."""
    found = []
    for port, title in sorted({(port, title) for _, port, title in listeners()}):
        try:
            with socket.create_connection((ip, port), timeout=2):
                pass
        except OSError:
            continue  # not reachable from the network
        status, tenant_data = 0, False
        try:
            reply = requests.get(f"http://{ip}:{port}/metrics", timeout=3)
            status, text = reply.status_code, reply.text
            tenant_data = 'tenant="' in text or any(f'"{t}"' in text for t in tenants)
        except requests.RequestException:
            pass  # gRPC and object-transfer ports speak no HTTP/1.1
        found.append(Answer(port, title, status, tenant_data))
    return found


def open_to_anyone(answers: list[Answer]) -> list[Answer]:
    """What answered a client without credentials (2xx/3xx), or named a tenant."""
    return [a for a in answers if 200 <= a.status < 400 or a.tenant_data]
