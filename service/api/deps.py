"""FastAPI dependencies: how a route gets the objects built at start-up, and upload reading."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request, UploadFile

from service.core import errors
from service.core.settings import Settings
from service.search.voicesearch import VoiceSearch

UPLOAD_CHUNK_BYTES = 1024 * 1024


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


def parse_metadata(raw: str | None) -> dict[str, Any] | None:
    """Metadata arrives as a JSON string inside a multipart form."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise errors.InvalidInput(f"metadata is not valid JSON: {exc.msg}") from exc
    except RecursionError:  # hostile nesting ({"a":{"a":…} thousands deep): a 422, not a 500
        raise errors.InvalidInput("metadata is nested too deeply") from None
    if not isinstance(value, dict):
        raise errors.InvalidInput("metadata must be a JSON object")
    return value
