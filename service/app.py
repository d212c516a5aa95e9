"""The FastAPI application: built by :func:`create_app`, wired at start-up by its lifespan.

Start-up order matters: models first (slowest, and a missing one only degrades the service),
then the database schema (migrations are the only way it changes), then the per-space indexes
(loaded from snapshots and caught up from the database, or rebuilt from it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from filelock import FileLock
from sqlalchemy import Engine

from service import __version__
from service.api import health, matching, speakers, voice
from service.api.error_handlers import install_error_handlers
from service.gallery import Gallery
from service.models import ModelRegistry
from service.routing import LanguageRouter
from service.settings import Settings
from service.usecases import VoiceSearch
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.repository import SpeakerStore

log = logging.getLogger("voicesearch")

DESCRIPTION = """\
Enroll speakers from audio; answer "who is this, top N, how sure" for any clip of speech.

The spoken language is detected (VoxLingua107) or given, and routes the clip to an encoder space:
CN-Celeb ECAPA for Chinese, Japanese, Korean, Thai and Vietnamese, VoxCeleb ECAPA otherwise.
Every error is `{"success": false, "error": {"code", "message", "details"}}`.
"""


def open_database(settings: Settings) -> Engine:
    """Upgrade the schema to head, then connect.

    Several workers start at once; the file lock makes exactly one of them run the migrations
    while the others wait and then find nothing left to do.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(settings.data_dir / ".migrate.lock")):
        upgrade_to_head(settings.resolved_database_url)
    return make_engine(settings.resolved_database_url)


def build_voicesearch(settings: Settings, models: ModelRegistry, engine: Engine) -> VoiceSearch:
    """Open storage and indexes for already-loaded models (also used by the CLI)."""
    identities = {space: enc.identity for space, enc in models.encoders.items()}
    store = SpeakerStore(make_session_factory(engine), identities)
    gallery = Gallery(
        store,
        settings.data_dir / "index",
        dims={space: enc.dim for space, enc in models.encoders.items()},
        model_identities=identities,
    )
    for space, how in gallery.open().items():
        log.info("index %s: %s", space, how)
    return VoiceSearch(settings, models, LanguageRouter(settings.cnceleb_languages), store, gallery)


def load_models(settings: Settings) -> ModelRegistry:
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    models = ModelRegistry.load(
        settings.model_sources,
        cache_dir=settings.resolved_model_cache_dir,
        device=settings.device,
    )
    for role, status in models.statuses.items():
        if status.loaded:
            log.info("model %s loaded from %s in %.1fs", role, status.source, status.load_seconds)
        else:
            log.warning("model %s NOT loaded from %s: %s", role, status.source, status.error)
    return models


def create_app(settings: Settings | None = None, *, models: ModelRegistry | None = None) -> FastAPI:
    """Build the app. Tests pass ``settings`` and already-loaded ``models``; ``voicesearch
    serve`` passes nothing and everything comes from the environment."""
    settings = settings or Settings()

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
    )
    app.state.settings = settings
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )
    install_error_handlers(app)
    for module in (health, voice, matching, speakers):
        app.include_router(module.router)
    return app
