"""`WebSocket /identify-live`: who is speaking now, from streamed audio.

The protocol, limits and analysis are ``service.recordings.live_session``'s; this module owns
the socket: authentication and the session cap *before* the handshake is accepted, then the
session, then the close code.

Authentication: the API key as on every HTTP endpoint (``Authorization: Bearer`` or
``X-API-Key``), or, because a browser's ``WebSocket`` cannot set headers, as the ``api_key``
query parameter. Query-string secrets are scrubbed from uvicorn's access and connection logs
(``service.api.access_log``). A refused handshake gets the service's JSON error with its HTTP
status (401, 403, 503 too_many_sessions) where the server supports WebSocket denial responses
(uvicorn does), else a close before accept with code 4000 + that status.

Origin: WebSockets are not subject to CORS, so a page on any site could open one to this
service from a visitor's browser. A handshake that carries an ``Origin`` (browsers always send
one) must come from this service's own origin or one of ``VOICESEARCH_ALLOWED_ORIGINS``, else
403; clients that send none (scripts, servers) are not affected.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.responses import JSONResponse

from service.api.auth import ROLE_READ, check_role, presented_key
from service.core import errors
from service.recordings.live_session import ClientGone, LiveSession, close_code

log = logging.getLogger(__name__)
router = APIRouter(tags=["live"])

#: The query parameter a browser sends its key in.
KEY_PARAMETER = "api_key"


class LiveSessions:
    """Open live sessions in this process, at most ``limit`` (every one holds a decoder and,
    for WebM, a thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def acquire(self) -> None:
        if self.open >= self.limit:
            raise errors.TooManySessions(
                f"{self.open} live sessions are open; retry later",
                details={"max_sessions": self.limit},
                headers={"Retry-After": "5"},
            )
        self.open += 1

    def release(self) -> None:
        self.open -= 1


class SocketTransport:
    """:class:`~service.recordings.live_session.Transport` over a Starlette WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def receive(self) -> bytes | str:
        try:
            message = await self.websocket.receive()
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise ClientGone from exc
        if message["type"] == "websocket.disconnect":
            raise ClientGone
        if message.get("bytes") is not None:
            return message["bytes"]
        return message.get("text") or ""

    async def send(self, event: dict[str, Any]) -> None:
        try:
            await self.websocket.send_text(json.dumps(event))
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise ClientGone from exc


def check_origin(websocket: WebSocket, allowed: list[str]) -> None:
    """403 for a browser page of another origin (see the module docstring)."""
    origin = websocket.headers.get("origin")
    if origin is None or origin in allowed or "*" in allowed:
        return
    if urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower():
        return  # the service's own page (scheme aside: a TLS proxy may sit in front)
    raise errors.Forbidden(
        "this page's origin may not open live sessions (VOICESEARCH_ALLOWED_ORIGINS)",
        details={"origin": origin[:200]},
    )


async def refuse(websocket: WebSocket, refused: errors.ServiceError) -> None:
    """Refuse the handshake: an HTTP error response if the server can send one, else a close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        response = JSONResponse(
            refused.to_body(), status_code=refused.status_code, headers=refused.headers
        )
        await websocket.send_denial_response(response)
    else:
        await websocket.close(close_code(refused), refused.message[:120])


@router.websocket("/identify-live")
async def identify_live(websocket: WebSocket) -> None:
    app = websocket.app
    settings = app.state.settings
    sessions: LiveSessions = app.state.live_sessions
    key = presented_key(websocket.headers) or websocket.query_params.get(KEY_PARAMETER)
    try:
        check_origin(websocket, settings.allowed_origins)
        check_role(app.state.keyring.actor_for(key), ROLE_READ)
        sessions.acquire()
    except errors.ServiceError as refused:
        await refuse(websocket, refused)
        return
    opened = time.monotonic()
    try:
        await websocket.accept()
        session = LiveSession(
            app.state.voicesearch,
            settings.live(),
            SocketTransport(websocket),
            max_top_n=settings.max_top_n,
        )
        code, reason = await session.run()
        log.info(
            "live session closed: code %d (%s) after %.1f s, %d windows",
            code,
            reason,
            time.monotonic() - opened,
            session.tally.windows,
        )
        if code != 1000 or reason != "client gone":
            # The client may have left first.
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await websocket.close(code, reason)
    finally:
        sessions.release()
