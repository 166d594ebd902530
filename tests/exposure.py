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


# Serve's inter-deployment service, which every replica serves on all interfaces (Ray binds it
# to [::] in ray/serve/_private/replica.py, with no setting): it unpickles what it is sent, so
# it must refuse a caller without the Ray token before that.
SERVE_GRPC_METHOD = "/ray.serve.ASGIService/HandleRequest"


@dataclass(frozen=True)
class Answer:
    port: int
    title: str
    status: int  # HTTP status of GET /metrics; 0: connected, but no HTTP answer
    tenant_data: bool  # the body names a tenant, or carries a tenant label
    grpc: str = ""  # a replica's gRPC port: the status of a call without the Ray token


def grpc_without_token(ip: str, port: int) -> str:
    """The status name a gRPC server at ``ip:port`` gives a call without credentials to Serve's
    replica method (UNAUTHENTICATED: Ray's token interceptor refused it; UNIMPLEMENTED: the
    server took the call, no auth in front)."""
    import grpc

    with grpc.insecure_channel(f"{ip}:{port}") as channel:
        call = channel.unary_unary(SERVE_GRPC_METHOD)
        try:
            call(b"", timeout=3)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name


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
        status, tenant_data, code = 0, False, ""
        try:
            reply = requests.get(f"http://{ip}:{port}/metrics", timeout=3)
            status, text = reply.status_code, reply.text
            tenant_data = 'tenant="' in text or any(f'"{t}"' in text for t in tenants)
        except requests.RequestException:  # gRPC and object-transfer ports: no HTTP/1.1
            if title.startswith("ray::ServeReplica"):  # where that method is served
                code = grpc_without_token(ip, port)
        found.append(Answer(port, title, status, tenant_data, code))
    return found


def open_to_anyone(answers: list[Answer]) -> list[Answer]:
    """What answered a client without credentials (HTTP 2xx/3xx; a gRPC call that got past
    authentication), or named a tenant."""
    return [a for a in answers if 200 <= a.status < 400 or a.tenant_data
            or a.grpc not in ("", "UNAUTHENTICATED")]
