"""The service's error vocabulary: one exception type, one JSON shape, one function that builds it.

Every failure a client can cause or observe is raised as a :class:`ServiceError` subclass with a
stable machine-readable ``code`` and the HTTP status that fits it. Every error response — these,
FastAPI's own validation and HTTP errors (``service.api.error_handlers``) and the body-size
middleware's 413 (``service.api.middleware``) — has the body :func:`error_body` builds::

    {"success": false, "error": {"code": "audio_too_short", "message": "...", "details": {...},
                                 "request_id": "..."}}

Lower layers (pipeline, search) raise these without knowing anything about HTTP beyond the
status number they carry.
"""

from __future__ import annotations

from typing import Any, ClassVar

from service.core.request_context import current_request_id


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of every error response (``details`` only when there are any;
    ``request_id`` when built while serving a request: the id in the ``X-Request-ID`` header and
    in that request's log lines)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    request_id = current_request_id()
    if request_id is not None:
        error["request_id"] = request_id
    return {"success": False, "error": error}


class ServiceError(Exception):
    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    #: Response headers every error of this type carries (e.g. ``WWW-Authenticate`` on a 401).
    default_headers: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        #: Extra response headers: the type's defaults plus this instance's (``Retry-After``).
        self.headers = {**self.default_headers, **(headers or {})}

    def to_body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


# --- audio -----------------------------------------------------------------------------------
class EmptyAudio(ServiceError):
    status_code = 400
    code = "empty_audio"


class InternalError(ServiceError):
    """An unexpected failure where no HTTP handler can answer (a live session's task): the
    client gets this error event instead of a bare close."""

    status_code = 500
    code = "internal_error"


class UndecodableAudio(ServiceError):
    status_code = 415
    code = "undecodable_audio"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class AudioTooLong(ServiceError):
    status_code = 413
    code = "audio_too_long"


class AudioTooShort(ServiceError):
    status_code = 422
    code = "audio_too_short"


class NoSpeech(ServiceError):
    status_code = 422
    code = "no_speech"


# --- access control --------------------------------------------------------------------------
class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"
    default_headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


# --- request semantics -----------------------------------------------------------------------
class InvalidInput(ServiceError):
    status_code = 422
    code = "validation_error"


class UnknownLanguage(ServiceError):
    status_code = 422
    code = "unknown_language"


class LanguageRequired(ServiceError):
    status_code = 422
    code = "language_required"


class UnknownSpace(ServiceError):
    status_code = 422
    code = "unknown_space"


# --- stored data -----------------------------------------------------------------------------
class SpeakerNotFound(ServiceError):
    status_code = 404
    code = "speaker_not_found"


class DuplicateSpeaker(ServiceError):
    status_code = 409
    code = "duplicate_external_id"


# --- enroll tokens (a voice of an identify-speakers answer, enrolled without re-uploading) -----
class EnrollTokenNotFound(ServiceError):
    """Never issued, or deleted a day after it expired."""

    status_code = 404
    code = "enroll_token_not_found"


class EnrollTokenUsed(ServiceError):
    status_code = 409
    code = "enroll_token_used"


class EnrollTokenExpired(ServiceError):
    status_code = 410
    code = "enroll_token_expired"


class EnrollTokenForbidden(ServiceError):
    """Issued to another API key."""

    status_code = 403
    code = "enroll_token_forbidden"


# --- availability ----------------------------------------------------------------------------
class ModelUnavailable(ServiceError):
    status_code = 503
    code = "model_unavailable"


class StorageBusy(ServiceError):
    status_code = 503
    code = "storage_busy"


class VectorStoreUnavailable(ServiceError):
    """The shared vector store (Milvus) did not answer; the database still holds every write."""

    status_code = 503
    code = "vector_store_unavailable"


class Overloaded(ServiceError):
    """More requests are waiting for model inference than the queue allows
    (``VOICESEARCH_MAX_INFERENCE_QUEUE``); sent with ``Retry-After``."""

    status_code = 503
    code = "overloaded"


# --- live sessions (WebSocket) -----------------------------------------------------------------
class RateLimited(ServiceError):
    """A live session sends audio faster than ``VOICESEARCH_LIVE_MAX_BYTES_PER_S``."""

    status_code = 429
    code = "rate_limited"


class TooManySessions(ServiceError):
    """``VOICESEARCH_LIVE_MAX_SESSIONS`` live sessions are open in this process already."""

    status_code = 503
    code = "too_many_sessions"


class IdleTimeout(ServiceError):
    """A live session sent nothing for ``VOICESEARCH_LIVE_IDLE_TIMEOUT_S``."""

    status_code = 408
    code = "idle_timeout"


class SessionTooLong(ServiceError):
    """A live session lasted ``VOICESEARCH_LIVE_MAX_SESSION_S``."""

    status_code = 408
    code = "session_too_long"
