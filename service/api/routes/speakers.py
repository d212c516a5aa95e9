"""Speaker enrollment and management. Speakers are addressed by their external id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, UploadFile, status

from service.api.auth import AdminActor, RequireRead
from service.api.deps import SettingsDep, VoiceSearchDep, parse_metadata, read_upload
from service.api.docs import AUDIO_ERRORS, error_responses
from service.api.mappers import enrollment_out, speaker_out
from service.api.schemas import (
    DeletedResponse,
    EnrollmentResponse,
    SpeakerListResponse,
    SpeakerPatch,
    SpeakerResponse,
)
from service.search.enrollment_amount import EnrollmentPolicy
from service.search.fields import EXTERNAL_ID_PATTERN, MAX_EXTERNAL_ID_LENGTH, MAX_OFFSET

# Reads need the `read` role (router-wide); writes also take an AdminActor parameter (`admin`).
router = APIRouter(
    prefix="/speakers",
    tags=["speakers"],
    dependencies=[RequireRead],
    responses=error_responses(400, 401, 403),
)

AudioFiles = Annotated[
    list[UploadFile],
    File(description="One or more speech recordings of the speaker (any supported format)."),
]
LanguageField = Annotated[
    str | None,
    Form(
        description="Spoken language of every file; detected per file when omitted.", max_length=16
    ),
]
SpeakerId = Annotated[str, Path(description="The speaker's external id.", max_length=256)]


async def _read_all(files: list[UploadFile], max_bytes: int) -> list[bytes]:
    return [await read_upload(f, max_bytes) for f in files]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrollmentResponse,
    responses={**AUDIO_ERRORS, **error_responses(409)},
    summary="Enroll a new speaker from one or more recordings",
)
async def enroll_speaker(
    actor: AdminActor,
    voice: VoiceSearchDep,
    settings: SettingsDep,
    audio: AudioFiles,
    external_id: Annotated[
        str | None,
        Form(
            description="Your id for the speaker (unique); generated when omitted.",
            min_length=1,
            max_length=MAX_EXTERNAL_ID_LENGTH,
            pattern=EXTERNAL_ID_PATTERN,
        ),
    ] = None,
    name: Annotated[str | None, Form(description="Display name.", max_length=256)] = None,
    metadata: Annotated[
        str | None, Form(description="Free-form JSON object stored with the speaker.")
    ] = None,
    language: LanguageField = None,
) -> EnrollmentResponse:
    meta = parse_metadata(metadata)
    data = await _read_all(audio, settings.max_upload_bytes)
    return enrollment_out(
        await voice.enroll(
            data, external_id=external_id, name=name, metadata=meta, language=language, actor=actor
        )
    )


@router.post(
    "/{speaker_id}/utterances",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrollmentResponse,
    responses={**AUDIO_ERRORS, **error_responses(404)},
    summary="Add recordings to an enrolled speaker",
)
async def add_utterances(
    actor: AdminActor,
    voice: VoiceSearchDep,
    settings: SettingsDep,
    speaker_id: SpeakerId,
    audio: AudioFiles,
    language: LanguageField = None,
) -> EnrollmentResponse:
    data = await _read_all(audio, settings.max_upload_bytes)
    return enrollment_out(await voice.add_utterances(speaker_id, data, language, actor))


@router.get("", response_model=SpeakerListResponse, summary="List enrolled speakers")
async def list_speakers(
    voice: VoiceSearchDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    name: Annotated[
        str | None, Query(description="Case-insensitive substring of the name.", max_length=256)
    ] = None,
    metadata: Annotated[
        str | None,
        Query(
            description='JSON object; speakers whose metadata has these values, e.g. {"team":"a"}'
        ),
    ] = None,
) -> SpeakerListResponse:
    records, total = await voice.list_speakers(
        offset=offset, limit=limit, name=name, metadata=parse_metadata(metadata)
    )
    return SpeakerListResponse(
        speakers=[speaker_out(r, EnrollmentPolicy.from_settings(settings)) for r in records],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.get(
    "/{speaker_id}",
    response_model=SpeakerResponse,
    responses=error_responses(404),
    summary="One speaker",
)
async def get_speaker(
    voice: VoiceSearchDep, settings: SettingsDep, speaker_id: SpeakerId
) -> SpeakerResponse:
    record = await voice.get_speaker(speaker_id)
    return SpeakerResponse(speaker=speaker_out(record, EnrollmentPolicy.from_settings(settings)))


@router.patch(
    "/{speaker_id}",
    response_model=SpeakerResponse,
    responses=error_responses(404, 422),
    summary="Change a speaker's name or metadata",
)
async def update_speaker(
    actor: AdminActor,
    voice: VoiceSearchDep,
    settings: SettingsDep,
    speaker_id: SpeakerId,
    body: SpeakerPatch,
) -> SpeakerResponse:
    changes = body.model_dump(exclude_unset=True)
    record = await voice.update_speaker(speaker_id, changes, actor)
    return SpeakerResponse(speaker=speaker_out(record, EnrollmentPolicy.from_settings(settings)))


@router.delete(
    "/{speaker_id}",
    response_model=DeletedResponse,
    responses=error_responses(404),
    summary="Delete a speaker from the database and every index",
)
async def delete_speaker(
    actor: AdminActor, voice: VoiceSearchDep, speaker_id: SpeakerId
) -> DeletedResponse:
    await voice.delete_speaker(speaker_id, actor)
    return DeletedResponse(id=speaker_id)
