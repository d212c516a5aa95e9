"""`GET /health`: which models are loaded, how many speakers each space holds (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service import __version__
from service.api.deps import VoiceSearchDep
from service.api.mappers import health_out
from service.api.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, summary="Service and model status")
async def health(request: Request, voice: VoiceSearchDep) -> HealthResponse:
    return health_out(
        voice.health(), version=__version__, auth_enabled=request.app.state.keyring.enabled
    )
