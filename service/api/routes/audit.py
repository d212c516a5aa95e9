"""`GET /audit`: who changed which enrolled voice, and when (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.auth import RequireAdmin
from service.api.deps import VoiceSearchDep
from service.api.docs import error_responses
from service.api.mappers import audit_entry_out
from service.api.schemas import AuditListResponse
from service.search.fields import MAX_OFFSET

router = APIRouter(tags=["admin"], dependencies=[RequireAdmin])


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
    rows, total = await voice.audit_entries(offset=offset, limit=limit, speaker=speaker)
    return AuditListResponse(
        entries=[audit_entry_out(r) for r in rows], total=total, offset=offset, limit=limit
    )
