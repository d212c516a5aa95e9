"""`GET /health`: service status for anyone; models, spaces and load for a known caller.

With API keys configured, a caller without a valid key gets only ``status`` (and ``auth``): model
paths and load errors describe the deployment, which is nobody else's business. With any valid
key, or with auth off, the details. The details read the database and the indexes, so they are
gathered in a worker thread: a health check never stalls the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from service import __version__
from service.api.auth import OptionalActor
from service.api.deps import VoiceSearchDep
from service.api.mappers import health_out, health_status
from service.api.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthResponse,
    response_model_exclude_unset=True,
    summary="Service status (details with an API key)",
)
async def health(request: Request, voice: VoiceSearchDep, actor: OptionalActor) -> HealthResponse:
    auth_enabled = request.app.state.keyring.enabled
    if actor is None:  # auth is on and no valid key came with the request
        return health_status(voice.models_loaded, auth_enabled=auth_enabled)
    return health_out(await voice.health(), version=__version__, auth_enabled=auth_enabled)
