"""The id of the request being served, visible to everything that runs on its behalf.

``service.api.observe`` binds an id to each HTTP request (the client's ``X-Request-ID`` when it
is a sane token, else a fresh one) in a :class:`~contextvars.ContextVar`. Context variables follow
the request into the worker threads it starts (anyio copies the context), so every log line
written while serving it (``service.core.json_logs``) and every error body
(``service.core.errors.error_body``) can name the request without the id being passed around.

Nothing resets the variable when the request ends: each request runs in its own task (its own
context copy), and the error page for an unhandled exception is rendered *outside* the
middleware that bound it, after it has returned, and must still see the id.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

#: The header that carries the id, both ways.
REQUEST_ID_HEADER = "X-Request-ID"

_REQUEST_ID: ContextVar[str | None] = ContextVar("voicesearch_request_id", default=None)
# A client's id is echoed into logs and headers: only a short token, no spaces, quotes or
# control characters (no log injection, no header splitting).
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_for(incoming: str | None) -> str:
    """The client's id when it is a sane token (a proxy's or a client's trace id), else new."""
    if incoming and _SANE_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def bind_request_id(request_id: str) -> None:
    _REQUEST_ID.set(request_id)


def current_request_id() -> str | None:
    """The id of the request this code runs for; None outside a request (CLI, start-up)."""
    return _REQUEST_ID.get()
