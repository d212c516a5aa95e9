"""Speaker enrollment and management. Speakers are addressed by their external id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile, status

from service.api.auth import AdminActor, RequireRead
from service.api.deps import (
    SettingsDep,
    VoiceSearchDep,
    parse_json_body,
    parse_metadata,
    read_upload,
)
from service.api.docs import AUDIO_ERRORS, error_responses, json_body
from service.api.mappers import enrollment_out, speaker_out
from service.api.routes.recordings import IdentifierDep
from service.api.schemas import (
    DeletedResponse,
    EnrollmentResponse,
    ErrorResponse,
    SpeakerListResponse,
    SpeakerPatch,
    SpeakerResponse,
)
from service.core import errors
from service.recordings.excerpts import Excerpt
from service.recordings.identify import RecordingIdentifier
from service.search.enrollment_amount import EnrollmentPolicy
from service.search.fields import (
    EXTERNAL_ID_PATTERN,
    MAX_EXTERNAL_ID_LENGTH,
    MAX_LANGUAGE_LENGTH,
    MAX_OFFSET,
)

# Reads need the `read` role (router-wide); writes also take an AdminActor parameter (`admin`).
router = APIRouter(
    prefix="/speakers",
    tags=["speakers"],
    dependencies=[RequireRead],
    responses=error_responses(400, 401, 403),
)

AudioFiles = Annotated[
    list[UploadFile] | None,
    File(
        description="One or more speech recordings of the speaker (any supported format); "
        "or none, with `enroll_token`."
    ),
]
TokenField = Annotated[
    str | None,
    Form(
        min_length=16,
        max_length=128,
        description="Instead of `audio`: the `enroll_token` of an `unknown_<n>` voice of a "
        "`POST /identify-speakers` answer (its speech, kept by the service). Once, by the same "
        "API key, before it expires.",
    ),
]
#: What a request with an enroll token may be refused with, besides an upload's errors.
TOKEN_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "A role too low, or another key's token."},
    404: {"model": ErrorResponse, "description": "Unknown speaker or enroll token."},
    409: {"model": ErrorResponse, "description": "External id taken, or token already used."},
    410: {"model": ErrorResponse, "description": "The enroll token expired."},
}
LanguageField = Annotated[
    str | None,
    Form(
        description="Spoken language of every file; detected per file when omitted.",
        max_length=MAX_LANGUAGE_LENGTH,
    ),
]
StartField = Annotated[
    float | None,
    Form(ge=0, description="Use each file only from this second on (part of a recording)."),
]
EndField = Annotated[
    float | None,
    Form(gt=0, description="Use each file only up to this second (past its end: to the end)."),
]
SpeakerId = Annotated[str, Path(description="The speaker's external id.", max_length=256)]


async def _read_all(
    files: list[UploadFile],
    max_bytes: int,
    identifier: RecordingIdentifier,
    start: float | None,
    end: float | None,
) -> list[bytes]:
    """The uploads, each cut to ``start``..``end`` when either is given."""
    if not files:
        raise errors.InvalidInput("send `audio` (one or more files) or an `enroll_token`")
    excerpt = Excerpt(start, end)
    excerpt.check()  # before reading megabytes for nothing
    return await identifier.cut([await read_upload(f, max_bytes) for f in files], excerpt)


def _token_alone(
    token: str | None, files: list[UploadFile] | None, start: float | None, end: float | None
) -> str | None:
    """The enroll token, when the request enrolls from one: then nothing else carries audio."""
    if token is not None and (files or start is not None or end is not None):
        raise errors.InvalidInput(
            "an enroll token already names the audio: send no `audio`, `start` or `end` with it"
        )
    return token


def _audit_token(label: str) -> dict[str, Any]:
    return {"source": "enroll_token", "voice": label}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrollmentResponse,
    responses={**AUDIO_ERRORS, **TOKEN_ERRORS},
    summary="Enroll a new speaker from one or more recordings, or from an enroll token",
)
async def enroll_speaker(
    actor: AdminActor,
    voice: VoiceSearchDep,
    identifier: IdentifierDep,
    settings: SettingsDep,
    audio: AudioFiles = None,
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
    start: StartField = None,
    end: EndField = None,
    enroll_token: TokenField = None,
) -> EnrollmentResponse:
    meta = parse_metadata(metadata)
    token = _token_alone(enroll_token, audio, start, end)
    if token is not None:
        async with identifier.redeem(token, actor.name) as found:
            result = await voice.enroll(
                [found.audio],
                external_id=external_id,
                name=name,
                metadata=meta,
                language=language or found.language,
                actor=actor,
                audit_details=_audit_token(found.label),
            )
        return enrollment_out(result)
    data = await _read_all(audio or [], settings.max_upload_bytes, identifier, start, end)
    return enrollment_out(
        await voice.enroll(
            data, external_id=external_id, name=name, metadata=meta, language=language, actor=actor
        )
    )


@router.post(
    "/{speaker_id}/utterances",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrollmentResponse,
    responses={**AUDIO_ERRORS, **TOKEN_ERRORS},
    summary="Add recordings (or an enroll token's voice) to an enrolled speaker",
)
async def add_utterances(
    actor: AdminActor,
    voice: VoiceSearchDep,
    identifier: IdentifierDep,
    settings: SettingsDep,
    speaker_id: SpeakerId,
    audio: AudioFiles = None,
    language: LanguageField = None,
    start: StartField = None,
    end: EndField = None,
    enroll_token: TokenField = None,
) -> EnrollmentResponse:
    token = _token_alone(enroll_token, audio, start, end)
    if token is not None:
        await voice.get_speaker(speaker_id)  # 404 before the token is taken
        async with identifier.redeem(token, actor.name) as found:
            result = await voice.add_utterances(
                speaker_id,
                [found.audio],
                language or found.language,
                actor,
                audit_details=_audit_token(found.label),
            )
        return enrollment_out(result)
    data = await _read_all(audio or [], settings.max_upload_bytes, identifier, start, end)
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
    openapi_extra=json_body(SpeakerPatch),
    summary="Change a speaker's name or metadata",
    description="Only the fields sent change; `metadata` replaces the whole object (`null` "
    "empties it). A request that changes nothing (no fields, or the stored values) writes "
    "nothing: `updated_at` stays and no audit entry is added.",
)
async def update_speaker(
    request: Request,
    actor: AdminActor,
    voice: VoiceSearchDep,
    settings: SettingsDep,
    speaker_id: SpeakerId,
) -> SpeakerResponse:
    body = await parse_json_body(request, SpeakerPatch)  # off the event loop
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
    return DeletedResponse(id=await voice.delete_speaker(speaker_id, actor))
