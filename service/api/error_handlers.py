"""Render every error, ours or the framework's, as the one JSON shape clients parse.

Storage's own exceptions (``storage.errors``) are mapped here, in one table, onto the service's
error vocabulary: whichever layer lets one through (a search, a list, ``/health``, a write), the
client gets the same status and code, never a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core import errors
from service.core.errors import ServiceError, error_body
from service.core.request_context import REQUEST_ID_HEADER, current_request_id
from storage import errors as storage_errors

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


#: Every ``storage.errors`` type a client can cause or observe → the service error it is
#: answered as (the codes clients already parse). Looked up along the exception's MRO.
STORAGE_ERRORS: dict[type[storage_errors.StorageError], type[ServiceError]] = {
    storage_errors.SpeakerNotFoundError: errors.SpeakerNotFound,  # 404 speaker_not_found
    storage_errors.DuplicateExternalIdError: errors.DuplicateSpeaker,  # 409
    storage_errors.InvalidMetadataFilterError: errors.InvalidInput,  # 422 validation_error
    storage_errors.InvalidMetadataError: errors.InvalidInput,  # 422 validation_error
    storage_errors.InvalidEmbeddingError: errors.InvalidInput,  # 422 validation_error
    storage_errors.StorageBusyError: errors.StorageBusy,  # 503 storage_busy
}


def service_error_for(exc: storage_errors.StorageError) -> ServiceError | None:
    """The service error a storage error is answered as (None: not one clients can cause)."""
    for cls in type(exc).__mro__:
        target = STORAGE_ERRORS.get(cls)
        if target is not None:
            return target(str(exc))
    return None


def _render(exc: ServiceError) -> JSONResponse:
    return JSONResponse(
        jsonable_encoder(exc.to_body()), status_code=exc.status_code, headers=exc.headers or None
    )


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return _render(exc)


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, storage_errors.StorageError)
    mapped = service_error_for(exc)
    if mapped is None:
        return await _unexpected_error(request, exc)
    return _render(mapped)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {
            "location": [str(part) for part in item.get("loc", ())],
            "message": item.get("msg", ""),
            "type": item.get("type", ""),
        }
        for item in exc.errors()
    ]
    first = problems[0] if problems else {"location": [], "message": "invalid request"}
    where = ".".join(first["location"][1:] or first["location"])
    message = f"{where}: {first['message']}" if where else first["message"]
    return JSONResponse(
        error_body("validation_error", message, {"errors": problems}), status_code=422
    )


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Never leak internals; log the traceback for the operator.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    # Rendered outside the request-id middleware (Starlette's outermost layer): add the header
    # here so the client can quote the id the log line above carries.
    request_id = current_request_id()
    return JSONResponse(
        error_body("internal_error", "internal server error"),
        status_code=500,
        headers={REQUEST_ID_HEADER: request_id} if request_id else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(storage_errors.StorageError, _storage_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
