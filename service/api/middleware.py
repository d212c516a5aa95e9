"""Request body size limit, enforced while the body streams in.

A request whose ``Content-Length`` is over the cap is answered 413 before one byte of its body is
read. A body without ``Content-Length`` (chunked) or one that lies about it is counted as it
arrives and refused as soon as it passes the cap, so a 2 GB upload costs at most the cap in
memory or temporary files, never 2 GB. ``application/json`` bodies have their own, smaller cap.

The 413 is the service's standard error body (``payload_too_large``). When the limit is hit
mid-stream, the exception raised from ``receive`` is a Starlette ``HTTPException``: FastAPI
passes those through its body parsing untouched, so the app's handler renders it; if anything
still lets it escape before a response started, this middleware answers itself.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import error_body


class RequestTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body is larger than {limit} bytes")
        self.limit = limit


def too_large_response(limit: int) -> JSONResponse:
    return JSONResponse(
        error_body(
            "payload_too_large",
            f"request body is larger than {limit} bytes",
            {"max_bytes": limit},
        ),
        status_code=413,
        headers={"Connection": "close"},
    )


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = min(max_json_bytes, max_body_bytes)

    def limit_for(self, headers: Headers) -> int:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json" or content_type.endswith("+json"):
            return self.max_json_bytes
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.limit_for(headers)
        declared = headers.get("content-length")
        if declared is not None:
            try:
                declared_bytes = int(declared)
            except ValueError:
                declared_bytes = -1
            if declared_bytes > limit:
                await too_large_response(limit)(scope, receive, send)
                return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestTooLarge:
            if response_started:
                raise
            await too_large_response(limit)(scope, receive, send)
