"""`POST /find-match`: who is this?

One path, three modes, chosen by what the client sends (the original clients use the first):
- JSON with `stored_embeddings`: rank the caller's own candidates (stateless);
- JSON without them: search the enrolled speakers of a space with an embedding;
- multipart with `audio`: detect the language, route, embed, and search that space.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile

from service.api.auth import RequireRead
from service.api.deps import SettingsDep, VoiceSearchDep, is_json, parse_json_body, read_upload
from service.api.docs import error_responses, json_body
from service.api.mappers import find_match_out
from service.api.schemas import FindMatchRequest, FindMatchResponse
from service.core import errors
from service.search.fields import MAX_LANGUAGE_LENGTH

router = APIRouter(
    tags=["search"], dependencies=[RequireRead], responses=error_responses(400, 401, 403)
)

_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["audio"],
    "properties": {
        "audio": {"type": "string", "format": "binary", "description": "Probe speech audio."},
        "language": {
            "type": "string",
            "maxLength": MAX_LANGUAGE_LENGTH,
            "description": "Skip detection: the spoken language.",
        },
        "top_n": {"type": "integer", "minimum": 1, "default": 5},
    },
}

_OPENAPI_BODY = json_body(FindMatchRequest)
_OPENAPI_BODY["requestBody"]["content"]["multipart/form-data"] = {"schema": _MULTIPART_SCHEMA}


def _form_int(value: object, field: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise errors.InvalidInput(f"{field} must be an integer") from None
    if number < 1:
        raise errors.InvalidInput(f"{field} must be at least 1")
    return number


@router.post(
    "/find-match",
    response_model=FindMatchResponse,
    responses=error_responses(400, 413, 415, 422, 503),
    openapi_extra=_OPENAPI_BODY,
    summary="Top-N speakers for a probe (audio or embedding)",
)
async def find_match(
    request: Request, voice: VoiceSearchDep, settings: SettingsDep
) -> FindMatchResponse | Response:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=10) as form:
            audio = form.get("audio")
            if not isinstance(audio, UploadFile):
                raise errors.InvalidInput("multipart find-match needs an `audio` file")
            language = form.get("language")
            top_n = _form_int(form.get("top_n"), "top_n", 5)
            data = await read_upload(audio, settings.max_upload_bytes)
        return find_match_out(
            await voice.search_audio(
                data, language if isinstance(language, str) and language else None, top_n
            )
        )

    if not is_json(content_type):
        raise errors.InvalidInput(
            "send application/json (embedding) or multipart/form-data (audio)",
            details={"content_type": content_type},
        )
    body = await parse_json_body(request, FindMatchRequest)
    if body.stored_embeddings is not None:
        return find_match_out(
            await voice.rank_candidates(
                body.user_embedding,
                body.stored_embeddings,
                body.top_n,
                body.space,
                body.language,
            )
        )
    result = await voice.search_embedding(
        body.user_embedding, body.top_n, body.space, body.language
    )
    # The hot path: pydantic-core writes the JSON in one step (FastAPI would validate the model
    # again against response_model and encode it with the json module). Same body, same schema.
    return Response(find_match_out(result).model_dump_json(), media_type="application/json")
