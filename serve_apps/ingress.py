"""What Serve's HTTP servers run in front of every app: a replica's own server under HAProxy,
the Python proxy otherwise. Serve imports :func:`middlewares` where the cluster's environment
names it (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, set by maas.cluster.serve_env).

A classic model's infer request takes milliseconds. For it Serve watches the client's
connection in a second task and races the two (``asyncio.wait``): ~8% of a replica's CPU
under 32 clients of single rows (py-spy, bench/RESULTS.md) to cancel work that ends within a
millisecond anyway. Serve skips that for a request that carries its
``x-request-disconnect-disabled: ?1`` header, which this adds to ``POST .../infer``. Chat
models' routes (``generate``, ``/v1``) keep the watch: a closed stream stops its generation.
"""

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

DISCONNECT_OFF = (b"x-request-disconnect-disabled", b"?1")


class QuickInfer:
    """ASGI middleware: marks ``POST .../infer`` as not worth watching for a disconnect."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" \
                and scope["path"].endswith("/infer"):
            scope["headers"] = [*scope["headers"], DISCONNECT_OFF]
        await self.app(scope, receive, send)


def middlewares() -> list[Middleware]:
    """Serve's HTTP callback: the middlewares its servers add (see the module docstring)."""
    return [Middleware(QuickInfer)]
