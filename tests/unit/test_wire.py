"""serve_apps.wire: uvicorn, patched, sends a response's head with its body in one write, and a
client receives the same bytes as from uvicorn unpatched (real servers, raw sockets)."""

import asyncio
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_apps.wire import coalesce_response_heads

pytestmark = pytest.mark.unit

SERVER = """
import asyncio, socket, sys
import uvicorn
if sys.argv[1] == "patched":
    from serve_apps.wire import coalesce_response_heads
    coalesce_response_heads()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    if path == "/error":
        raise RuntimeError("before the answer")
    if path == "/broken":  # its head sent, then a failure: uvicorn closes the connection
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        raise RuntimeError("after the head")
    if path == "/stream":  # no length: chunked, its head goes out at once
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in (b"data: 1\\n\\n", b"data: 2\\n\\n"):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    status, body = (204, b"") if path == "/empty" else (200, b'{"outputs":[1,2,3]}')
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    if path == "/slow":
        await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": body})

sock = socket.socket()  # its own free port, told to the test (no race for a port)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, http="httptools", log_level="critical")).run(sockets=[sock])
"""

REQUESTS = {
    "json": b"POST /json HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
    "head": b"HEAD /json HTTP/1.1\r\nhost: x\r\n\r\n",
    "stream": b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n",
    "empty": b"GET /empty HTTP/1.1\r\nhost: x\r\n\r\n",
    "slow": b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n",
    "error": b"GET /error HTTP/1.1\r\nhost: x\r\n\r\n",
    "broken": b"GET /broken HTTP/1.1\r\nhost: x\r\n\r\n",
}
REPO = Path(__file__).resolve().parents[2]


def _exchange(port: int, requests: list[bytes]) -> bytes:
    """Send ``requests`` on one keep-alive connection (pipelined: uvicorn answers them in
    order, each with its own response cycle), the last asking to close; all the bytes that
    come back, with the date header (the only one that varies) taken out."""
    last = requests[-1].replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"".join(requests[:-1]) + last)
        while chunk := conn.recv(65536):
            received += chunk
    return b"".join(line for line in received.splitlines(keepends=True)
                    if not line.lower().startswith(b"date:"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    ports, procs = {}, []
    try:
        for kind in ("plain", "patched"):
            procs.append(subprocess.Popen([sys.executable, "-c", SERVER, kind], cwd=REPO,
                                          stdout=subprocess.PIPE, text=True))
            ports[kind] = int(procs[-1].stdout.readline())
        for port in ports.values():
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.parametrize("sequence", [["json"], ["head"], ["stream"], ["empty"], ["slow"],
                                      ["error"], ["broken"],
                                      ["json", "head", "stream", "empty", "json"]])
def test_a_client_receives_the_same_bytes_as_from_uvicorn_unpatched(servers, sequence):
    requests = [REQUESTS[name] for name in sequence]
    plain, patched = (_exchange(servers[kind], requests) for kind in ("plain", "patched"))
    assert plain.startswith(b"HTTP/1.1 ") and plain == patched


class Recording:
    """What a response writes to its connection, call by call."""

    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _cycle(transport: Recording, method: str = "POST"):
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    scope = {"type": "http", "method": method, "path": "/", "http_version": "1.1"}
    log = logging.getLogger("test_wire")
    return RequestResponseCycle(scope, transport, FlowControl(transport), log, log, False,
                                [], asyncio.Event(), False, True, lambda: None)


def _answer(cycle, headers: list, bodies: list[bytes]) -> None:
    async def run():
        await cycle.send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, body in enumerate(bodies):
            await cycle.send({"type": "http.response.body", "body": body,
                              "more_body": i < len(bodies) - 1})
    asyncio.run(run())


def test_a_response_with_a_length_is_one_write_and_a_stream_starts_at_once():
    coalesce_response_heads()
    coalesce_response_heads()  # idempotent: wrapped once
    sized = Recording()
    _answer(_cycle(sized), [(b"content-length", b"2")], [b"{}"])
    assert len(sized.writes) == 1
    assert sized.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and sized.writes[0].endswith(b"{}")
    streamed = Recording()
    _answer(_cycle(streamed), [(b"content-type", b"text/event-stream")], [b"a", b"b", b""])
    assert len(streamed.writes) == 4 and streamed.writes[0].endswith(b"\r\n\r\n")
    head_only = Recording()
    _answer(_cycle(head_only, "HEAD"), [(b"content-length", b"2")], [b"{}"])
    assert len(head_only.writes) == 1 and head_only.writes[0].endswith(b"\r\n\r\n")
    given_once = Recording()  # ASGI allows any iterable of headers: none may be lost
    _answer(_cycle(given_once), iter([(b"content-type", b"application/json"),
                                      (b"content-length", b"2")]), [b"{}"])
    assert len(given_once.writes) == 1
    assert b"content-type: application/json\r\ncontent-length: 2\r\n" in given_once.writes[0]
