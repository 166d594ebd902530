"""Errors that carry their outcome.

Every maas error says what went wrong, the value seen and what to do, and knows the HTTP
status it stands for when it reaches a client: the serve apps map :class:`MaasError` to a
response once (``serve_apps.http``), and the CLI prints its message and exits non-zero. No
status is ever guessed from an error's text.
"""

from __future__ import annotations

from collections.abc import Sequence


class MaasError(Exception):
    """Base of every maas error.

    ``status`` is the HTTP outcome (the class's, unless given); ``param`` names the request
    field at fault when there is one (OpenAI's ``param``); ``headers`` go with the response
    (``Retry-After`` on a 429, ``WWW-Authenticate`` on a 401)."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.param = param
        self.headers = headers


def field_path(loc: Sequence[str | int]) -> str:
    """A pydantic error location as people write it: ``models[0].serve.max_rows``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
