"""Every HTTP request gets an id, a log line and (``service.core.metrics``) its counts.

:class:`RequestObserverMiddleware` is the outermost of the app's middleware, so it sees every
request, including those answered by the other middleware (413, 401) and those that fail:

- the request id (the client's ``X-Request-ID`` when it is a sane token, else a new one) is bound
  for the request (``service.core.request_context``: error bodies and log lines carry it) and
  returned in the ``X-Request-ID`` response header;
- one line on the ``voicesearch.requests`` logger when the request ends: method, path (never the
  query string, which may hold secrets), the *route template* (``/speakers/{speaker_id}``),
  status, duration in milliseconds and the client address, as fields of the JSON log line;
- the request counter and latency histogram, labelled by route template and status (a template,
  not the path: one series per route, whatever ids clients send).

A request that raises is answered 500 by Starlette's outermost error middleware *after* this one
has returned; it is logged and counted here as a 500 (no response had started), and the error
handler (``service.api.error_handlers``) puts the id on that response itself.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core import metrics
from service.core.logs import REQUEST_LOGGER
from service.core.request_context import REQUEST_ID_HEADER, bind_request_id, request_id_for

log = logging.getLogger(REQUEST_LOGGER)

#: The route label of a request no route matched (404 probes must not create new series).
UNMATCHED_ROUTE = "<unmatched>"


def route_template(scope: Scope) -> str:
    """The path template of the route that served the request (set by Starlette's router)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED_ROUTE


class RequestObserverMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(Headers(scope=scope).get(REQUEST_ID_HEADER))
        bind_request_id(request_id)
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            method = scope.get("method", "")
            metrics.observe_request(method, route, status, seconds)
            client = scope.get("client")
            log.info(
                "%s %s %d %.1f ms",
                method,
                scope.get("path", ""),
                status,
                seconds * 1000,
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": scope.get("path", ""),
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "client": client[0] if client else None,
                },
            )
