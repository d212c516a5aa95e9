"""Access control on the request headers, before any byte of a body is read.

FastAPI reads and parses a request body (a multipart upload is spooled to disk) *before* it
runs the route's dependencies, so a key checked only by a dependency let an unauthenticated
client make the server receive up to ``MAX_REQUEST_BYTES`` before its 401. This pure-ASGI
middleware finds the route a request is for, reads the role that route requires from its own
dependencies (``require_read`` / ``require_admin`` in ``service.api.auth``: declared once, on the
routers), and answers 401/403 from the headers alone. The response says ``Connection: close``
when a body was announced, so the server drops the connection instead of draining the body.

The dependencies still run after it (they give routes the caller for the audit log and document
the headers in OpenAPI); both use the same ``KeyRing.actor_for`` and ``check_role``.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.auth import ROLE_ADMIN, ROLE_OF_DEPENDENCY, KeyRing, check_role, presented_key
from service.core.errors import ServiceError


def required_role(dependant: Dependant) -> str | None:
    """The strongest role a route's dependencies require (None: a public route)."""
    roles: set[str] = set()
    stack = [dependant]
    while stack:
        node = stack.pop()
        for sub in node.dependencies:
            call = sub.call
            if call is not None and call in ROLE_OF_DEPENDENCY:
                roles.add(ROLE_OF_DEPENDENCY[call])
            stack.append(sub)
    if not roles:
        return None
    return ROLE_ADMIN if ROLE_ADMIN in roles else roles.pop()


def announces_body(headers: Headers) -> bool:
    length = headers.get("content-length", "0").strip()
    return "transfer-encoding" in headers or (length != "0" and length != "")


class AccessControlMiddleware:
    def __init__(self, app: ASGIApp, *, keyring: KeyRing, routes: Iterable[APIRoute]) -> None:
        self.app = app
        self.keyring = keyring
        # Resolved once: (route, role) for every route that needs a key.
        self.guarded = [(route, required_role(route.dependant)) for route in routes]

    def role_for(self, scope: Scope) -> str | None:
        for route, role in self.guarded:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return role
        return None  # public, or no such route (the app answers 404/405 without reading)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keyring.enabled:
            await self.app(scope, receive, send)
            return
        role = self.role_for(scope)
        if role is not None:
            headers = Headers(scope=scope)
            try:
                check_role(self.keyring.actor_for(presented_key(headers)), role)
            except ServiceError as refused:
                extra = {"Connection": "close"} if announces_body(headers) else {}
                response = JSONResponse(
                    refused.to_body(),
                    status_code=refused.status_code,
                    headers={**refused.headers, **extra},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
