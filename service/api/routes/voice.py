"""Stateless voice endpoints: embedding extraction, language detection, comparison."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from service.api.auth import RequireRead
from service.api.deps import SettingsDep, VoiceSearchDep, parse_json_body, read_upload
from service.api.docs import AUDIO_ERRORS, error_responses, json_body
from service.api.mappers import comparison_out, extraction_out, language_out
from service.api.schemas import (
    CompareVoicesRequest,
    CompareVoicesResponse,
    DetectLanguageResponse,
    ExtractEmbeddingResponse,
)
from service.search.fields import MAX_LANGUAGE_LENGTH

#: One audio file per request: a second one would be silently ignored otherwise.
ONE_FILE = {"max_files": 1}

router = APIRouter(
    tags=["voice"], dependencies=[RequireRead], responses=error_responses(400, 401, 403)
)

AudioFile = Annotated[
    UploadFile,
    File(description="Speech audio: WAV, FLAC, OGG/Opus, MP3, M4A/AAC or WebM; any rate."),
]
LanguageField = Annotated[
    str | None,
    Form(
        description="Spoken language (ISO 639, e.g. `en`, `zh`); skips language detection.",
        max_length=MAX_LANGUAGE_LENGTH,
    ),
]


@router.post(
    "/extract-embedding",
    form_limits=ONE_FILE,
    response_model=ExtractEmbeddingResponse,
    responses=AUDIO_ERRORS,
    summary="Speaker embedding of a clip, in the space its language routes to",
)
async def extract_embedding(
    voice: VoiceSearchDep,
    settings: SettingsDep,
    audio: AudioFile,
    language: LanguageField = None,
) -> ExtractEmbeddingResponse:
    data = await read_upload(audio, settings.max_upload_bytes)
    return extraction_out(await voice.extract(data, language))


@router.post(
    "/detect-language",
    form_limits=ONE_FILE,
    response_model=DetectLanguageResponse,
    responses=AUDIO_ERRORS,
    summary="Spoken language of a clip (VoxLingua107)",
)
async def detect_language(
    voice: VoiceSearchDep, settings: SettingsDep, audio: AudioFile
) -> DetectLanguageResponse:
    data = await read_upload(audio, settings.max_upload_bytes)
    return language_out(await voice.detect_language(data))


@router.post(
    "/compare-voices",
    response_model=CompareVoicesResponse,
    responses=error_responses(422),
    openapi_extra=json_body(CompareVoicesRequest),
    summary="Cosine similarity of two embeddings and the match decision",
)
async def compare_voices(request: Request, voice: VoiceSearchDep) -> CompareVoicesResponse:
    body = await parse_json_body(request, CompareVoicesRequest)  # off the event loop
    return comparison_out(await voice.compare(body.embedding1, body.embedding2, body.space))
