"""The FastAPI application: built by :func:`create_app`, wired at start-up by its lifespan.

Start-up order matters: models first (slowest, and a missing one only degrades the service),
then the database schema (migrations are the only way it changes), then the per-space indexes
(loaded from snapshots and caught up from the database, or rebuilt from it). The building
blocks are ``service.bootstrap``'s, shared with the CLI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.api.auth import KeyRing, log_auth_state
from service.api.error_handlers import install_error_handlers
from service.api.middleware import BodySizeLimitMiddleware
from service.api.offline_docs import install_offline_docs
from service.api.routes import audit as audit_api
from service.api.routes import calibration as calibration_api
from service.api.routes import health, matching, speakers, voice
from service.bootstrap import build_voicesearch, load_models, open_database
from service.core.settings import Settings
from service.pipeline.registry import ModelRegistry

log = logging.getLogger("voicesearch")

DESCRIPTION = """\
Enroll speakers from audio; answer "who is this, top N, how sure" for any clip of speech.

The spoken language is detected (VoxLingua107) or given, and routes the clip to an encoder space:
CN-Celeb ECAPA for Chinese, Japanese, Korean, Thai and Vietnamese, VoxCeleb ECAPA otherwise.
Every error is `{"success": false, "error": {"code", "message", "details"}}`.
"""


def form_limits(settings: Settings) -> dict[str, int]:
    """Multipart limits for every form route: the files an enrollment may carry, a few text
    fields, and text fields no larger than the metadata cap (plus room for its form encoding)."""
    return {
        "max_files": settings.max_files_per_enrollment,
        "max_fields": 16,
        "max_part_size": settings.max_metadata_bytes + 4096,
    }


def create_app(settings: Settings | None = None, *, models: ModelRegistry | None = None) -> FastAPI:
    """Build the app. Tests pass ``settings`` and already-loaded ``models``; ``voicesearch
    serve`` passes nothing and everything comes from the environment."""
    settings = settings or Settings()
    keyring = KeyRing.from_settings(settings)  # a bad key configuration fails here, loudly
    log_auth_state(keyring)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        registry = models or await anyio.to_thread.run_sync(load_models, settings)
        engine = await anyio.to_thread.run_sync(open_database, settings)
        voicesearch = await anyio.to_thread.run_sync(build_voicesearch, settings, registry, engine)
        app.state.voicesearch = voicesearch
        log.info(
            "voicesearch %s ready in %.1fs (%s)",
            __version__,
            time.perf_counter() - started,
            "all models loaded" if registry.all_loaded else "DEGRADED: see /health",
        )
        try:
            yield
        finally:
            # A snapshot on the way out makes the next start-up a load instead of a replay.
            await anyio.to_thread.run_sync(voicesearch.gallery.snapshot)
            engine.dispose()

    app = FastAPI(
        title="voicesearch",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # The docs pages are installed below with local assets (FastAPI's load from a CDN).
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.public_docs else None,
    )
    if settings.public_docs:
        install_offline_docs(app)
    app.state.settings = settings
    app.state.keyring = keyring
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.request_body_limit,
        max_json_bytes=settings.max_json_bytes,
    )
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )
    install_error_handlers(app)
    for module in (health, voice, matching, speakers):
        app.include_router(module.router, form_limits=form_limits(settings))
    app.include_router(audit_api.router)
    app.include_router(calibration_api.router)
    return app
