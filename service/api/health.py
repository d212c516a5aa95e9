from __future__ import annotations

from fastapi import APIRouter, Request

from service import __version__
from service.api.deps import VoiceSearchDep
from service.schemas import HealthResponse, ModelHealth, SpaceHealth

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, summary="Service and model status")
async def health(request: Request, voice: VoiceSearchDep) -> HealthResponse:
    models = voice.models
    spaces = {
        role: SpaceHealth(
            available=status.loaded,
            indexed_speakers=voice.gallery.size(role) if status.loaded else None,
            threshold=voice.threshold(role),
        )
        for role, status in models.statuses.items()
        if role != "langid"
    }
    return HealthResponse(
        status="healthy" if models.all_loaded else "degraded",
        models_loaded=models.all_loaded,
        models={
            role: ModelHealth(
                loaded=s.loaded,
                source=s.source,
                identity=s.identity,
                error=s.error,
                load_seconds=s.load_seconds,
            )
            for role, s in models.statuses.items()
        },
        spaces=spaces,
        version=__version__,
        auth="enabled" if request.app.state.keyring.enabled else "disabled",
    )
