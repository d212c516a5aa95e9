"""`POST /identify-speakers`: who speaks when in a recording, and which voices are enrolled.

The answer is JSON (`IdentifySpeakersResponse`) or, with `?format=rttm` or `Accept: text/rttm`,
the timeline as RTTM lines. The work is ``service.recordings.identify.RecordingIdentifier``'s,
built at start-up over the app's ``VoiceSearch`` (same decoding limits, VAD, encoders, index
and find-match decision).
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response

from service.api.auth import ROLE_ADMIN, ReadActor, RequireRead, grants
from service.api.deps import SettingsDep, read_upload
from service.api.docs import AUDIO_ERRORS, error_responses
from service.api.mappers import identify_speakers_out
from service.api.recording_schemas import IdentifySpeakersResponse
from service.recordings.identify import IdentifyOptions, RecordingIdentifier, to_rttm

RTTM = "text/rttm"

router = APIRouter(
    tags=["recordings"], dependencies=[RequireRead], responses=error_responses(400, 401, 403)
)


def get_identifier(request: Request) -> RecordingIdentifier:
    return request.app.state.identifier


IdentifierDep = Annotated[RecordingIdentifier, Depends(get_identifier)]
Count = Annotated[int | None, Form(ge=1, le=1000)]


@router.post(
    "/identify-speakers",
    form_limits={"max_files": 1},
    response_model=IdentifySpeakersResponse,
    responses={
        **AUDIO_ERRORS,
        200: {"content": {RTTM: {"schema": {"type": "string"}}}},
    },
    summary="Who speaks when in a recording, named when enrolled",
    description="Speech detection, speaker embeddings of 1.5 s windows every 0.75 s, clustering "
    "into voices (their number estimated unless `num_speakers` is given; `max_speakers` caps "
    "the estimate), then each voice's mean embedding searched among the enrolled speakers of "
    "the routed space with find-match's open-set decision. Voices that match nobody are "
    "`unknown_1`, `unknown_2`…, each with an `enroll_token` (for a caller that may enroll) "
    "to enroll that voice by name without sending the recording again. One speaker at a "
    "time: in overlapped speech one voice wins. Busy: 503 `overloaded` with `Retry-After`.",
)
async def identify_speakers(
    request: Request,
    actor: ReadActor,
    identifier: IdentifierDep,
    settings: SettingsDep,
    audio: Annotated[
        UploadFile, File(description="The recording; any format the other endpoints take.")
    ],
    language: Annotated[
        str | None, Form(max_length=16, description="Spoken language; skips detection.")
    ] = None,
    num_speakers: Count = None,
    max_speakers: Count = None,
    top_n: Annotated[int, Form(ge=1)] = 5,
    output: Annotated[
        Literal["json", "rttm"] | None,
        Query(alias="format", description="`rttm` for RTTM lines instead of JSON."),
    ] = None,
) -> Response | IdentifySpeakersResponse:
    data = await read_upload(audio, settings.max_upload_bytes)
    options = IdentifyOptions(language or None, top_n, num_speakers, max_speakers)
    # Enroll tokens only for a caller who could redeem them (enrolling needs `admin`).
    principal = actor.name if grants(actor, ROLE_ADMIN) else None
    result = await identifier.identify(data, options, principal)
    wants_rttm = output == "rttm" or (output is None and RTTM in request.headers.get("accept", ""))
    if wants_rttm:
        file_id = PurePath(audio.filename or "recording").stem
        return PlainTextResponse(to_rttm(result, file_id), media_type=RTTM)
    return identify_speakers_out(result)
