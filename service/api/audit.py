"""`GET /audit`: who changed which enrolled voice, and when (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from service.api.deps import VoiceSearchDep
from service.api.docs import error_responses
from service.auth import RequireAdmin
from service.limits import MAX_OFFSET
from storage import audit

router = APIRouter(tags=["admin"], dependencies=[RequireAdmin])


class AuditEntryOut(BaseModel):
    id: int
    created_at: datetime
    action: str = Field(description="e.g. `speaker.enroll`, `speaker.delete`, `index.rebuild`.")
    speaker_id: str | None = Field(description="External id of the speaker concerned.")
    actor: str = Field(description="Name of the API key (never the key); `anonymous` if open.")
    role: str | None = Field(description="Role of that key; null when access control is off.")
    details: dict[str, Any]


class AuditListResponse(BaseModel):
    success: bool = True
    entries: list[AuditEntryOut] = Field(description="Newest first.")
    total: int
    offset: int
    limit: int


@router.get(
    "/audit",
    response_model=AuditListResponse,
    responses=error_responses(401, 403),
    summary="Audit log of changes to enrolled speakers (admin)",
)
async def list_audit(
    voice: VoiceSearchDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    speaker: Annotated[
        str | None, Query(description="Only entries about this external id.", max_length=256)
    ] = None,
) -> AuditListResponse:
    rows, total = await anyio.to_thread.run_sync(
        lambda: audit.list_entries(
            voice.store.session_factory,
            limit=limit,
            offset=offset,
            speaker_external_id=speaker,
        )
    )
    return AuditListResponse(
        entries=[
            AuditEntryOut(
                id=r.id,
                created_at=r.created_at,
                action=r.action,
                speaker_id=r.speaker_external_id,
                actor=r.actor,
                role=r.role,
                details=r.details,
            )
            for r in rows
        ],
        total=total,
        offset=offset,
        limit=limit,
    )
