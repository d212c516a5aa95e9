"""FastAPI dependencies: how a route gets the objects built at start-up; reading uploads, JSON
bodies and JSON-in-a-string fields."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.core import errors
from service.core.settings import Settings
from service.search.voicesearch import VoiceSearch

UPLOAD_CHUNK_BYTES = 1024 * 1024
M = TypeVar("M", bound=BaseModel)


def get_voicesearch(request: Request) -> VoiceSearch:
    return request.app.state.voicesearch


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


VoiceSearchDep = Annotated[VoiceSearch, Depends(get_voicesearch)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """Read an uploaded file, refusing it (413) as soon as it passes ``max_bytes``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(UPLOAD_CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise errors.PayloadTooLarge(
                f"upload {upload.filename or ''!r} is larger than {max_bytes} bytes",
                details={"max_bytes": max_bytes},
            )
        chunks.append(chunk)
    return b"".join(chunks)


def is_json(content_type: str) -> bool:
    """An ``application/json`` (or ``+json``) body; a missing content type counts as JSON."""
    media = content_type.split(";")[0].strip().lower()
    return media in ("", "application/json") or media.endswith("+json")


async def parse_json_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``, parsed and validated in a worker thread.

    FastAPI parses a body parameter on the event loop; bodies may be up to ``MAX_JSON_BYTES``
    (32 MiB: 100 000 stateless candidates), which would stall every other request of the worker
    meanwhile. Errors are the same 422 ``validation_error`` FastAPI would give."""
    content_type = request.headers.get("content-type", "")
    if not is_json(content_type):
        raise errors.InvalidInput(
            "send the body as application/json", details={"content_type": content_type}
        )
    raw = await request.body()
    try:
        return await anyio.to_thread.run_sync(model.model_validate_json, raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def _not_json_constant(name: str) -> Any:
    raise errors.InvalidInput(
        f"metadata is not valid JSON: {name} is not a JSON number", details={"field": "metadata"}
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as infinity
        _not_json_constant(text)
    return value


def parse_metadata(raw: str | None) -> dict[str, Any] | None:
    """Metadata as a JSON string: a multipart form field, or the list filter's query parameter.

    Strict JSON: Python's parser accepts ``NaN``/``Infinity`` (and turns ``1e400`` into
    infinity), which no JSON database function does; those are refused here."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = json.loads(raw, parse_constant=_not_json_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise errors.InvalidInput(f"metadata is not valid JSON: {exc.msg}") from exc
    except RecursionError:  # hostile nesting ({"a":{"a":…} thousands deep): a 422, not a 500
        raise errors.InvalidInput("metadata is nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise errors.InvalidInput(f"metadata is not usable JSON: {exc}") from None
    if not isinstance(value, dict):
        raise errors.InvalidInput("metadata must be a JSON object")
    return value
