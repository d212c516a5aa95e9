"""Building the service from settings: database, models, and the VoiceSearch that uses them.

Shared by the HTTP app (``service.app``), the CLI (``service.commands``) and the measurements
that run a throwaway copy of the service (``service.evaluation``), so all of them run the very
same wiring.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from sqlalchemy import Engine

from index.spec import IndexSpec
from service.core.settings import SPACE_CNCELEB, Settings
from service.decisions.bandwidth import narrowband_identity, resolve_space_scoring
from service.decisions.normalization import AsNorm
from service.decisions.policy import DecisionPolicy
from service.pipeline.backends.export_cache import ProgressFactory, default_progress
from service.pipeline.language import LanguageRouter
from service.pipeline.quality import QualityAssessor
from service.pipeline.registry import ModelRegistry
from service.pipeline.threads import configure_torch, inference_threads
from service.search.gallery import Gallery
from service.search.vector_store import VectorStore
from service.search.voicesearch import VoiceSearch
from storage.calibration import CalibrationStore
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.speakers import SpeakerStore

log = logging.getLogger("voicesearch")


def open_database(settings: Settings) -> Engine:
    """Upgrade the schema to head, then connect.

    Several workers start at once; the file lock makes exactly one of them run the migrations
    while the others wait and then find nothing left to do.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(settings.data_dir / ".migrate.lock")):
        upgrade_to_head(settings.resolved_database_url)
    return make_engine(settings.resolved_database_url)


def build_vector_store(
    settings: Settings, store: SpeakerStore, dims: dict[str, int], identities: dict[str, str]
) -> VectorStore:
    """The configured vector store (``VOICESEARCH_VECTOR_STORE``), not opened yet."""
    section = settings.vector_store_settings()
    if section.kind == "milvus":
        from index.milvus_collections import MilvusCollections
        from service.search.milvus_gallery import MilvusGallery

        assert section.milvus_uri is not None  # vector_store_settings() defaults it
        collections = MilvusCollections(
            section.milvus_uri, token=section.milvus_token, prefix=section.milvus_prefix
        )
        return MilvusGallery(store, collections, dims, identities)
    return Gallery(
        store,
        settings.data_dir / "index",
        dims=dims,
        model_identities=identities,
        index_spec=IndexSpec(
            kind=settings.index_type,
            hnsw_m=settings.index_hnsw_m,
            ef_construction=settings.index_hnsw_ef_construction,
            ef_search=settings.index_hnsw_ef_search,
            rerank=settings.index_fastscan_rerank,
            train_size=settings.index_fastscan_train_size,
            auto_threshold=settings.index_auto_threshold,
        ),
    )


def build_voicesearch(settings: Settings, models: ModelRegistry, engine: Engine) -> VoiceSearch:
    """Open storage and indexes for already-loaded models (also used by the CLI)."""
    identities = {space: enc.identity for space, enc in models.encoders.items()}
    dims = {space: enc.dim for space, enc in models.encoders.items()}
    # Per space: cosine or AS-norm, which cohort (shipped only for its own checkpoint). Before
    # the indexes open: a bad operator cohort file stops start-up with its reason.
    # Telephone-band profiles are one more (derived) space to storage and the gallery: their
    # own embeddings, profiles, change log entries, index, snapshots, rebuild and verify.
    scoring, views, _ = resolve_space_scoring(settings, models.encoders)
    stored_identities = dict(identities)
    stored_dims = dict(dims)
    for view in views.values():
        stored_identities[view.derived] = narrowband_identity(identities[view.space])
        stored_dims[view.derived] = dims[view.space]
    store = SpeakerStore(
        make_session_factory(engine),
        stored_identities,
        min_profile_speech_s=settings.min_enroll_speech_s,
    )
    floor = store.apply_floor()
    if floor.made_searchable or floor.made_unsearchable:
        log.info(
            "enrollment floor %.1f s of net speech: %d speaker(s) made searchable, %d made "
            "unsearchable (decided under another floor, e.g. by an earlier release)",
            settings.min_enroll_speech_s,
            floor.made_searchable,
            floor.made_unsearchable,
        )
    gallery = build_vector_store(settings, store, stored_dims, stored_identities)
    for space, how in gallery.open().items():
        log.info("index %s: %s", space, how)
    for space, chosen in scoring.items():
        log.info("scores %s: %s, %s", space, chosen.score_type, chosen.cohort_status)
    # Speech quality (the VAD, loaded once), the decision policy (stored calibrations), AS-norm.
    return VoiceSearch(
        settings,
        models,
        LanguageRouter(
            settings.cnceleb_languages,
            cnceleb_enabled=SPACE_CNCELEB in models.enabled_spaces(),
        ),
        store,
        gallery,
        quality=QualityAssessor.from_settings(settings.quality()),
        policy=DecisionPolicy(
            settings.decisions(),
            CalibrationStore(make_session_factory(engine)),
            identities,
            scoring,
        ),
        normalizer=AsNorm.from_scoring(scoring, gallery, top_k=settings.asnorm_top_k),
    )


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
                # Never the operator's Milvus: a throwaway database there would take over the
                # production collections (they belong to another database identity).
                "vector_store": "faiss",
                "milvus_uri": None,
                **overrides,
            }
        )
        # model_copy copies cached_property values too: drop the ones derived from data_dir.
        for name in ("resolved_database_url", "resolved_model_cache_dir"):
            fresh.__dict__.pop(name, None)
        engine = open_database(fresh)
        voicesearch = None
        try:
            voicesearch = build_voicesearch(fresh, models, engine)
            yield voicesearch
        finally:
            if voicesearch is not None:
                voicesearch.gallery.close()
            engine.dispose()


def load_models(settings: Settings, progress: ProgressFactory = default_progress) -> ModelRegistry:
    """Every configured model, on the configured backend (ONNX exports built when missing)."""
    inference = settings.inference()
    # torch runs the reference (and the export), whatever the backend: give it the same share.
    configure_torch(settings.torch_threads or inference_threads(inference.threads))
    models = ModelRegistry.load(
        settings.model_sources,
        cache_dir=settings.resolved_model_cache_dir,
        device=settings.device,
        inference=inference,
        progress=progress,
    )
    # Failures are already logged, with their reason, by ModelRegistry.load.
    for role, status in models.statuses.items():
        if status.loaded:
            log.info("model %s loaded from %s in %.1fs", role, status.source, status.load_seconds)
    return models
