"""API keys and roles: who may call what.

Keys come from configuration (``VOICESEARCH_API_KEYS`` and/or ``VOICESEARCH_API_KEYS_FILE``),
one entry per key::

    role:key            e.g.  read:3f9c...        (named ``read-1``, ``read-2``… in the audit log)
    role:name:key       e.g.  admin:ops-team:7a1e...

Roles: ``admin`` may do everything (enroll, add audio, update, delete, read the audit log);
``read`` may search, extract, detect, compare and list/get speakers. A key is sent as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Only the sha256 digest of each key is kept in memory; a presented key is hashed and compared
with every configured digest with :func:`hmac.compare_digest` (fixed-length digests, no early
exit), so neither the key's content nor its length leaks through timing. Keys are never logged:
the audit log and the logs name the key (its name and role) instead.

With no key configured the API is open (``/health`` says ``auth: "disabled"`` and start-up logs
a warning); every caller is then the ``anonymous`` actor.

Two places enforce the same rules with the same functions (:meth:`KeyRing.actor_for`,
:func:`check_role`): ``service.api.access.AccessControlMiddleware`` on the request headers,
before any byte of a body is read (FastAPI reads and parses a body *before* it runs a route's
dependencies), and the dependencies below, which also hand routes the :class:`Actor` and
document the headers in the OpenAPI schema.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.core import errors
from service.core.config_errors import ConfigurationError
from service.core.settings import Settings
from storage.audit import ANONYMOUS, Actor

log = logging.getLogger(__name__)

ROLE_ADMIN = "admin"
ROLE_READ = "read"
ROLES = (ROLE_ADMIN, ROLE_READ)
#: What each role may do, as the set of roles it satisfies.
_GRANTS = {ROLE_ADMIN: {ROLE_ADMIN, ROLE_READ}, ROLE_READ: {ROLE_READ}}

MIN_KEY_LENGTH = 16
_KEY_RE = re.compile(r"^[A-Za-z0-9._~+/=-]+$")  # RFC 6750 token68: fits a Bearer header as is
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ApiKeyConfigError(ConfigurationError):
    """The configured keys cannot be used (bad role, short key, duplicate…)."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: str
    digest: bytes  # sha256 of the key

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.role)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_key_entries(entries: list[str], *, where: str) -> list[ApiKey]:
    keys: list[ApiKey] = []
    counters = dict.fromkeys(ROLES, 0)
    for number, raw in enumerate(entries, start=1):
        entry = raw.strip()
        parts = entry.split(":")
        if len(parts) == 2:
            role, key = parts
            name = None
        elif len(parts) == 3:
            role, name, key = parts
        else:
            # Never echo the entry: it holds a key.
            raise ApiKeyConfigError(f"{where} entry {number}: expected role:key or role:name:key")
        role, key = role.strip().lower(), key.strip()
        if role not in ROLES:
            raise ApiKeyConfigError(f"{where} entry {number}: role must be one of {ROLES}")
        if len(key) < MIN_KEY_LENGTH or not _KEY_RE.match(key):
            raise ApiKeyConfigError(
                f"{where} entry {number}: a key needs at least {MIN_KEY_LENGTH} characters "
                "from A-Z a-z 0-9 . _ ~ + / = -"
            )
        name = (name or "").strip()
        if not name:  # unnamed keys are numbered per role: admin-1, admin-2, read-1…
            counters[role] += 1
            name = f"{role}-{counters[role]}"
        if not _NAME_RE.match(name):
            raise ApiKeyConfigError(f"{where} entry {number}: name must match {_NAME_RE.pattern}")
        keys.append(ApiKey(name=name, role=role, digest=_digest(key)))
    return keys


class KeyRing:
    """The configured keys; :meth:`identify` maps a presented key to its :class:`ApiKey`."""

    def __init__(self, keys: list[ApiKey]) -> None:
        digests = [k.digest for k in keys]
        if len(set(digests)) != len(digests):
            raise ApiKeyConfigError("the same API key is configured twice")
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ApiKeyConfigError("API key names must be unique")
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def actor_for(self, presented: str | None) -> Actor:
        """Who presented this key (``anonymous`` when auth is off); 401 for none or a wrong one."""
        if not self.enabled:
            return ANONYMOUS
        if not presented:
            raise errors.Unauthorized(
                "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
            )
        key = self.identify(presented)
        if key is None:
            raise errors.Unauthorized("invalid API key")
        return key.actor

    def identify(self, presented: str) -> ApiKey | None:
        digest = _digest(presented)
        found = None
        for key in self.keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries: list[str] = []
        if settings.api_keys is not None:
            entries += [e for e in settings.api_keys.get_secret_value().split(",") if e.strip()]
        if settings.api_keys_file is not None:
            entries += read_key_file(settings.api_keys_file)
        # One list (environment first, then the file): unnamed keys get one numbering.
        return cls(parse_key_entries(entries, where="API key configuration"))


def read_key_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ApiKeyConfigError(f"cannot read API key file {path}: {exc.strerror}") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# --- FastAPI dependencies ------------------------------------------------------------------------
# Declared through FastAPI's security classes so /docs shows an "Authorize" button and the
# OpenAPI schema documents both headers; auto_error=False: we render our own 401 body.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <API key>`")


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>``, else ``X-API-Key``
    (``headers``: case-insensitive, as Starlette's ``Headers``)."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or None


def grants(actor: Actor, role: str) -> bool:
    """Whether ``actor`` may do what ``role`` may (everyone may when auth is off)."""
    return actor.role is None or role in _GRANTS.get(actor.role, set())


def check_role(actor: Actor, role: str) -> Actor:
    """``actor`` if its role grants ``role`` (everyone does when auth is off); else 403."""
    if not grants(actor, role):
        raise errors.Forbidden(
            f"this operation needs the {role!r} role; the key {actor.name!r} has {actor.role!r}",
            details={"required_role": role, "key_role": actor.role},
        )
    return actor


def get_keyring(request: Request) -> KeyRing:
    return request.app.state.keyring


async def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> Actor:
    # `bearer`/`header_key` are declared for the OpenAPI schema; the key is read the one way.
    return get_keyring(request).actor_for(presented_key(request.headers))


async def optional_actor(request: Request) -> Actor | None:
    """The caller when it presents a valid key (``anonymous`` when auth is off), else None:
    for public endpoints that show more to a known caller (``/health``)."""
    try:
        return get_keyring(request).actor_for(presented_key(request.headers))
    except errors.Unauthorized:
        return None


def _require(role: str) -> Callable[[Actor], Awaitable[Actor]]:  # a FastAPI dependency factory
    async def check(actor: Annotated[Actor, Depends(authenticate)]) -> Actor:
        return check_role(actor, role)

    check.__name__ = f"require_{role}"
    return check


require_read = _require(ROLE_READ)
require_admin = _require(ROLE_ADMIN)

#: For ``dependencies=[...]`` of a router or route.
RequireRead = Depends(require_read)
RequireAdmin = Depends(require_admin)
#: For a route parameter that also needs to know who called (audit).
ReadActor = Annotated[Actor, Depends(require_read)]
AdminActor = Annotated[Actor, Depends(require_admin)]
#: For a public route that shows more to a caller with a valid key.
OptionalActor = Annotated[Actor | None, Depends(optional_actor)]

#: The dependency that requires each role: how ``service.api.access`` reads a route's role.
ROLE_OF_DEPENDENCY: dict[Callable[..., object], str] = {
    require_admin: ROLE_ADMIN,
    require_read: ROLE_READ,
}


def log_auth_state(keyring: KeyRing) -> None:
    if keyring.enabled:
        roles = sorted({f"{k.name} ({k.role})" for k in keyring.keys})
        log.info("API keys: %d configured: %s", len(keyring.keys), ", ".join(roles))
    else:
        log.warning(
            "NO API KEYS CONFIGURED: the API is open to anyone who can reach it "
            "(set VOICESEARCH_API_KEYS or VOICESEARCH_API_KEYS_FILE)"
        )
