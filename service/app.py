"""The FastAPI application: built by :func:`create_app`, wired at start-up by its lifespan.

Start-up order matters: models (slowest, and a missing one only degrades the service) and the
database schema (migrations are the only way it changes) at the same time, then the per-space
indexes (loaded from snapshots and caught up from the database, or rebuilt from it). The building
blocks are ``service.bootstrap``'s, shared with the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.api.access import AccessControlMiddleware
from service.api.access_log import scrub_access_log
from service.api.auth import KeyRing, log_auth_state
from service.api.docs import add_body_schemas
from service.api.error_handlers import install_error_handlers
from service.api.middleware import BodySizeLimitMiddleware
from service.api.observe import RequestObserverMiddleware
from service.api.offline_docs import install_offline_docs
from service.api.routes import audit as audit_api
from service.api.routes import calibration as calibration_api
from service.api.routes import health, live, matching, speakers, voice
from service.api.routes import metrics as metrics_api
from service.api.routes import recordings as recordings_api
from service.api.routes.page import install_page
from service.api.schemas import CompareVoicesRequest, FindMatchRequest, SpeakerPatch
from service.bootstrap import build_voicesearch, load_models, open_database
from service.core.request_context import REQUEST_ID_HEADER
from service.core.settings import Settings
from service.pipeline.registry import ModelRegistry
from service.recordings.identify import RecordingIdentifier

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


async def _registry(models: ModelRegistry | None, settings: Settings) -> ModelRegistry:
    return models or await anyio.to_thread.run_sync(load_models, settings)


def create_app(settings: Settings | None = None, *, models: ModelRegistry | None = None) -> FastAPI:
    """Build the app. Tests pass ``settings`` and already-loaded ``models``; ``voicesearch
    serve`` passes nothing and everything comes from the environment."""
    settings = settings or Settings()
    keyring = KeyRing.from_settings(settings)  # a bad key configuration fails here, loudly
    log_auth_state(keyring)
    scrub_access_log()  # keys sent in a query string (refused) must not be logged either
    scrub_access_log("uvicorn.error")  # where uvicorn logs WebSocket handshakes (with the query)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        # Models and the database schema do not depend on each other: both at once (issue 14).
        registry, engine = await asyncio.gather(
            _registry(models, settings), anyio.to_thread.run_sync(open_database, settings)
        )
        voicesearch = await anyio.to_thread.run_sync(build_voicesearch, settings, registry, engine)
        app.state.voicesearch = voicesearch
        app.state.identifier = RecordingIdentifier(voicesearch, settings.recordings())
        log.info(
            "voicesearch %s ready in %.1fs (%s)",
            __version__,
            time.perf_counter() - started,
            "all models loaded" if registry.all_loaded else "DEGRADED: see /health",
        )
        try:
            yield
        finally:
            try:
                # A snapshot on the way out makes the next start-up a load instead of a replay.
                await anyio.to_thread.run_sync(voicesearch.gallery.snapshot)
            except Exception:
                # A failed snapshot (disk full, Milvus unreachable) costs the next start a
                # replay; it must not leak the client or the database pool below.
                log.exception("snapshot at shutdown failed")
            finally:
                # Milvus: the client's channel (FAISS: waits for a maintenance job, if one runs).
                await anyio.to_thread.run_sync(voicesearch.gallery.close)
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
    app.state.live_sessions = live.LiveSessions(settings.live_max_sessions)
    # Every router whose routes need a key: the access-control middleware learns their roles.
    routers = (
        health,
        voice,
        matching,
        speakers,
        recordings_api,
        audit_api,
        calibration_api,
        metrics_api,
    )
    # Middleware order, outermost first: CORS (preflights need no key), access control (401/403
    # from the headers, before any body byte), body size (413 while streaming), the routes.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.request_body_limit,
        max_json_bytes=settings.max_json_bytes,
    )
    app.add_middleware(
        AccessControlMiddleware,
        keyring=keyring,
        routes=[route for module in routers for route in module.router.routes],
    )
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER],
        )
    # Outermost: every request, whoever answers it, gets an id, a log line and its counts.
    app.add_middleware(RequestObserverMiddleware)
    install_error_handlers(app)
    for module in routers:
        app.include_router(module.router, form_limits=form_limits(settings))
    app.include_router(live.router)  # a WebSocket: authenticated by the route, before accept
    install_page(app)
    # JSON bodies the routes parse themselves, off the event loop (service.api.deps).
    add_body_schemas(app, [FindMatchRequest, CompareVoicesRequest, SpeakerPatch])
    return app
