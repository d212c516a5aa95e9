"""OpenAPI descriptions shared by several routes."""

from __future__ import annotations

from typing import Any

from service.api.schemas import ErrorResponse


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Bad request (e.g. empty audio file).",
        401: "No API key, or an unknown one (`WWW-Authenticate: Bearer`).",
        403: "The API key's role does not allow this operation.",
        404: "Speaker not found.",
        409: "A speaker with this external id already exists.",
        413: "Upload or decoded audio too large / too long.",
        415: "The upload is not decodable audio.",
        422: "Invalid input: validation error, too little speech, bad embedding.",
        503: "A model this request needs is not loaded, or storage is busy.",
    }
    return {s: {"model": ErrorResponse, "description": descriptions[s]} for s in statuses}


AUDIO_ERRORS = error_responses(400, 413, 415, 422, 503)
