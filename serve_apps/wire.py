"""A replica's small HTTP answers leave in one socket write instead of two.

Ray Serve runs uvicorn in every replica (direct ingress, behind HAProxy). uvicorn writes a
response's status line and headers to the socket when the app sends ``http.response.start``,
and its body when the app sends ``http.response.body``: two writes, two TCP segments, and two
wake-ups of HAProxy, for an answer of a few hundred bytes. Measured at one client at a time
(bench/RESULTS.md): the second write was 20-30% of a bare Serve replica's CPU per request and
~15% of HAProxy's. :func:`coalesce_response_heads` has uvicorn hold the head of a response
that declares its ``content-length`` until its first body write, and write the two together.
A streamed response (no length: chunked, server-sent events) keeps its head going out at once,
so a client sees the stream open before its first event. The bytes a client receives are the
same (tests/unit/test_wire.py runs uvicorn both ways).

uvicorn has no option for this and Serve builds uvicorn's config itself, so the patch wraps
``RequestResponseCycle.send`` of uvicorn's httptools protocol (the one uvicorn picks when
httptools is installed, as it is here); uvicorn is pinned in constraints.txt, and the tests
fail if an upgrade changes what the wrapper relies on.
"""

from typing import Any

CONTENT_LENGTH = b"content-length"


class HeldHead:
    """Stands in for a response's transport: what is written while ``holding`` waits for the
    next write (or :meth:`flush`, or :meth:`close`), which takes it along."""

    __slots__ = ("transport", "holding", "pending")

    def __init__(self, transport: Any):
        self.transport = transport
        self.holding = False
        self.pending = b""

    def write(self, data: bytes) -> None:
        if self.holding:
            self.pending += data
            return
        if self.pending:
            data, self.pending = self.pending + data, b""
        self.transport.write(data)

    def flush(self) -> None:
        if self.pending and not self.transport.is_closing():  # the client may have left
            data, self.pending = self.pending, b""
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...
        return getattr(self.transport, name)


def _declares_length(message: dict) -> bool:
    return any(name.lower() == CONTENT_LENGTH for name, _ in message.get("headers", ()))


def coalesce_response_heads() -> None:
    """Make uvicorn's httptools protocol, in this process, write a response's head with its
    first body write when the response declares its length (idempotent)."""
    try:
        from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    except ImportError:  # no httptools: uvicorn serves with h11, left as it is
        return

    send = RequestResponseCycle.send
    if getattr(send, "coalesces", False):
        return

    async def coalescing_send(self: RequestResponseCycle, message: dict) -> None:
        transport = self.transport
        if type(transport) is not HeldHead:
            transport = self.transport = HeldHead(transport)  # type: ignore[assignment]
        if message["type"] == "http.response.start":
            if not isinstance(message.get("headers", []), list):  # any iterable: read it once
                message = {**message, "headers": list(message["headers"])}
            transport.holding = _declares_length(message)
            try:
                await send(self, message)
            finally:
                transport.holding = False
        else:
            await send(self, message)
            transport.flush()  # a body uvicorn did not write (HEAD, 204): the head alone

    coalescing_send.coalesces = True  # type: ignore[attr-defined]
    RequestResponseCycle.send = coalescing_send  # type: ignore[method-assign]
