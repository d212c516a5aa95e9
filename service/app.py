"""The FastAPI application: built by :func:`create_app`, wired at start-up by its lifespan.

Start-up order matters: models first (slowest, and a missing one only degrades the service),
then the database schema (migrations are the only way it changes), then the per-space indexes
(loaded from snapshots and caught up from the database, or rebuilt from it).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from filelock import FileLock
from sqlalchemy import Engine

from index.vector_index import IndexSpec
from service import __version__
from service.api.auth import KeyRing, log_auth_state
from service.api.error_handlers import install_error_handlers
from service.api.middleware import BodySizeLimitMiddleware
from service.api.routes import audit as audit_api
from service.api.routes import calibration as calibration_api
from service.api.routes import health, matching, speakers, voice
from service.core.settings import Settings
from service.pipeline.language import LanguageRouter
from service.pipeline.registry import ModelRegistry
from service.search.gallery import Gallery
from service.search.voicesearch import VoiceSearch
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.speakers import SpeakerStore

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
    store = SpeakerStore(
        make_session_factory(engine),
        identities,
        min_profile_speech_s=settings.min_enroll_speech_s,
    )
    gallery = Gallery(
        store,
        settings.data_dir / "index",
        dims={space: enc.dim for space, enc in models.encoders.items()},
        model_identities=identities,
        index_spec=IndexSpec(
            kind=settings.index_type,
            hnsw_m=settings.index_hnsw_m,
            ef_construction=settings.index_hnsw_ef_construction,
            ef_search=settings.index_hnsw_ef_search,
        ),
    )
    for space, how in gallery.open().items():
        log.info("index %s: %s", space, how)
    return VoiceSearch(
        settings,
        models,
        LanguageRouter(settings.cnceleb_languages),
        store,
        gallery,
        **quality_and_calibration(settings, engine, gallery, identities),
    )


def quality_and_calibration(
    settings: Settings, engine: Engine, gallery: Gallery, identities: dict[str, str]
) -> dict:
    """The VAD (loaded once), the decision policy (stored calibrations) and AS-norm."""
    from service.decisions.normalization import AsNorm
    from service.decisions.policy import DecisionPolicy
    from service.pipeline.quality import QualityAssessor
    from storage.calibration import CalibrationStore

    return {
        "quality": QualityAssessor.from_settings(settings.quality()),
        "policy": DecisionPolicy(
            settings.decisions(), CalibrationStore(make_session_factory(engine)), identities
        ),
        "normalizer": (
            AsNorm.from_settings(settings.asnorm(), gallery) if settings.asnorm_spaces else None
        ),
    }


@contextmanager
def temporary_voicesearch(
    settings: Settings, models: ModelRegistry, **overrides: object
) -> Iterator[VoiceSearch]:
    """A VoiceSearch on a throwaway data directory, removed afterwards: `eval` and `calibrate`
    measure through the real pipeline, store and index without touching the operator's data."""
    with tempfile.TemporaryDirectory(prefix="voicesearch-tmp-") as tmp:
        fresh = settings.model_copy(
            update={
                "data_dir": Path(tmp),
                "database_url": None,
                "model_cache_dir": settings.resolved_model_cache_dir,
                **overrides,
            }
        )
        # model_copy copies cached_property values too: drop the ones derived from data_dir.
        for name in ("resolved_database_url", "resolved_model_cache_dir"):
            fresh.__dict__.pop(name, None)
        engine = open_database(fresh)
        try:
            yield build_voicesearch(fresh, models, engine)
        finally:
            engine.dispose()


def load_models(settings: Settings) -> ModelRegistry:
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    models = ModelRegistry.load(
        settings.model_sources,
        cache_dir=settings.resolved_model_cache_dir,
        device=settings.device,
    )
    # Failures are already logged, with their reason, by ModelRegistry.load.
    for role, status in models.statuses.items():
        if status.loaded:
            log.info("model %s loaded from %s in %.1fs", role, status.source, status.load_seconds)
    return models


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
        **(
            {}
            if settings.public_docs
            else {"docs_url": None, "redoc_url": None, "openapi_url": None}
        ),
    )
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
