"""The product's verbs, in one facade the HTTP routers and the CLI call.

:class:`VoiceSearch` composes the parts — the clip pipeline (``service.pipeline.clip``), matching
(``service.search.matching``), enrollment (``service.search.enrollment``), speaker management
(``service.search.speakers``), the gallery and the decision policy — and does the plumbing they
share: blocking work (decoding, inference, SQLite, FAISS, even the calibration refresh a
decision may trigger) runs in worker threads so the event loop stays responsive; a request that
needs model inference is admitted by the pipeline's bounded queue (503 ``overloaded`` beyond it)
and runs each file as its own step; external ids are Unicode-normalised (NFC) wherever they
enter; index snapshots are refreshed in the background after writes. It returns domain results;
``service.api.mappers`` turns them into response bodies.

A little over 400 lines: it is the one facade of every verb; the logic behind each lives in its
own module.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import numpy as np

from service.core.settings import Settings
from service.decisions.bandwidth import PAIR_WIDEBAND, is_narrowband
from service.decisions.cohort import resolve_scoring
from service.decisions.normalization import AsNorm
from service.decisions.policy import Decision, DecisionPolicy
from service.pipeline.clip import ClipPipeline, EmbeddedClip
from service.pipeline.inference_queue import QueueDepth
from service.pipeline.language import LanguageDetection, LanguageRouter
from service.pipeline.quality import QualityAssessor, QualityReport
from service.pipeline.registry import LANGID_ROLE, ModelRegistry, ModelStatus
from service.search.enrollment import Enrollment, EnrollmentResult
from service.search.fields import check_language, normalise_external_id
from service.search.matching import Candidate, Comparison, Matcher, MatchResult, unit
from service.search.narrowband import usable_views
from service.search.speakers import Speakers
from service.search.vector_store import VectorStore
from storage import audit
from storage.audit import ANONYMOUS, Actor, AuditRow
from storage.records import SpeakerRecord, UtteranceInput
from storage.speakers import SpeakerStore

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DetectedLanguage:
    detection: LanguageDetection
    space: str  # the space the language routes to
    duration_s: float  # of the decoded clip


@dataclass(frozen=True)
class SpaceHealth:
    available: bool
    indexed_speakers: int | None
    threshold: float


@dataclass(frozen=True)
class Health:
    models: dict[str, ModelStatus]  # every configured model, loaded or not
    all_loaded: bool
    spaces: dict[str, SpaceHealth]
    inference: QueueDepth


@dataclass(frozen=True)
class IndexStats:
    """One space's index, for operators (``/metrics``)."""

    space: str
    vectors: int  # one profile per searchable speaker
    index_type: str  # flat, fastscan or hnsw
    snapshot_age_s: float | None  # since the snapshot file was written; None: none yet
    changes_behind: int  # change-log rows this worker's index had not applied (before this read)


@dataclass(frozen=True)
class SpaceCalibration:
    """The decision in force for one space, and what it applies to."""

    space: str
    model_identity: str | None
    decision: Decision  # at the space's current gallery size
    asnorm: bool
    cohort: str | None  # which AS-norm cohort, or why the shipped one is not used
    narrowband: str | None = None  # telephone-band profiles: on, or why not
    #: Per quality class, per pair type, the bar its probes' pairs meet now
    #: (``_strict_bars``); None where no strict tail applies.
    strict_bars: Mapping[str, Mapping[str, float]] | None = None


class VoiceSearch:
    """Use cases of the service. One instance per process, built at start-up."""

    def __init__(
        self,
        settings: Settings,
        models: ModelRegistry,
        router: LanguageRouter,
        store: SpeakerStore,
        gallery: VectorStore,
        *,
        quality: QualityAssessor | None = None,
        policy: DecisionPolicy | None = None,
        normalizer: AsNorm | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.router = router
        self.store = store
        self.gallery = gallery
        # Speech quality (VAD), decision thresholds/calibration, AS-norm: built once at start-up
        # by service.bootstrap.build_voicesearch; the fallbacks keep hand-built instances working.
        self.quality = quality or QualityAssessor.from_settings(settings.quality())
        identities = {space: enc.identity for space, enc in models.encoders.items()}
        dims = {space: enc.dim for space, enc in models.encoders.items()}
        #: Per space: cosine or AS-norm, which cohort, the shipped default rule.
        self.scoring = (
            dict(policy.scoring) if policy else resolve_scoring(settings.asnorm(), identities, dims)
        )
        self.policy = policy or DecisionPolicy(settings.decisions(), None, identities, self.scoring)
        if normalizer is None:
            normalizer = AsNorm.from_scoring(self.scoring, gallery, top_k=settings.asnorm_top_k)
        self.normalizer = normalizer
        # Telephone-band profiles where fitted; why not, per space (/calibration, doctor).
        views, self.narrowband_status = usable_views(
            self.scoring, settings.narrowband_profiles, gallery, normalizer
        )
        self.views = views
        self.pipeline = ClipPipeline(settings.clip(), models, router, self.quality)
        self.matcher = Matcher(
            settings, models, router, store, gallery, self.policy, normalizer, views
        )
        self.enrollment = Enrollment(settings, self.pipeline, store, list(views.values()))
        self.speakers = Speakers(settings, store)
        self._snapshot_running = threading.Lock()

    # --- plumbing -----------------------------------------------------------------------------
    def _snapshot_soon(self) -> None:
        """Refresh index snapshots in the background when enough changes have piled up.

        A snapshot only makes the next start-up faster: the write itself is already durable in
        SQLite. So the request that crosses the threshold must not wait for a file write of the
        whole index (seconds at a million speakers). One snapshot thread at a time.
        """
        if not self._snapshot_running.acquire(blocking=False):
            return

        def run() -> None:
            try:
                self.gallery.maybe_snapshot()
            except Exception:
                log.exception("background index snapshot failed; the next one will retry")
            finally:
                self._snapshot_running.release()

        threading.Thread(target=run, name="index-snapshot", daemon=True).start()

    def _written(self, write: Callable[[], T]) -> T:
        """Run a database write, then publish it to the vector store before the caller answers
        (Milvus: applied to the shared collection, so any node's next search sees it). A store
        that cannot take it now is not an error here: the change is committed, and the next
        search on any node finds the store behind and replays it."""
        result = write()
        try:
            self.gallery.publish()
        except Exception:
            log.exception("vector store: publishing a committed write failed; searches replay it")
        return result

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run database / index work in a thread."""
        return await anyio.to_thread.run_sync(fn, *args)

    def decision(self, space: str) -> Decision:
        """The decision in force for ``space`` at its current gallery size (see
        service.decisions.policy.DecisionPolicy)."""
        size = self.gallery.size(space) if space in self.gallery.dims else 0
        return self.policy.decision(space, size)

    def threshold(self, space: str) -> float:
        """Threshold ``is_match`` uses in ``space`` now (it grows with the gallery)."""
        return self.decision(space).threshold

    # --- language and embeddings --------------------------------------------------------------
    async def detect_language(self, data: bytes) -> DetectedLanguage:
        async with self.pipeline.queue.admitted():
            report, detection = await self.pipeline.infer(self.pipeline.detect_language, data)
        return DetectedLanguage(
            detection, self.router.space_for(detection.language), report.duration_s
        )

    async def extract(self, data: bytes, language: str | None) -> EmbeddedClip:
        check_language(language)
        async with self.pipeline.queue.admitted():
            return await self.pipeline.infer(self.pipeline.embed_routed, data, language)

    async def compare(self, e1: list[float], e2: list[float], space: str | None) -> Comparison:
        # A thread: the decision may re-read stored calibrations (SQLite).
        return await self._io(self.matcher.compare, e1, e2, space)

    # --- matching -----------------------------------------------------------------------------
    async def rank_candidates(
        self,
        probe: list[float],
        candidates: Sequence[Candidate],
        top_n: int,
        space: str | None,
        language: str | None,
    ) -> MatchResult:
        """The original stateless find-match: rank the caller's own candidate embeddings
        (up to 100 000 of them: NumPy work, in a thread)."""
        return await self._io(
            self.matcher.rank_candidates, probe, candidates, top_n, space, language
        )

    async def search_embedding(
        self, probe: list[float], top_n: int, space: str | None, language: str | None
    ) -> MatchResult:
        space = self.matcher.space_of_request(space, language)
        top_n = self.matcher.clamp_top_n(top_n)
        vector: np.ndarray = unit(np.array(probe))
        return await self._io(self.matcher.search_index, space, vector, top_n)

    async def search_audio(self, data: bytes, language: str | None, top_n: int) -> MatchResult:
        top_n = self.matcher.clamp_top_n(top_n)
        check_language(language)
        async with self.pipeline.queue.admitted():
            clip = await self.pipeline.infer(self.pipeline.embed_routed, data, language)
        routed, report = clip.routed, clip.quality
        narrow = is_narrowband(clip.audio.source_sample_rate)  # telephone-band profiles
        search = self.matcher.search_index
        result = await self._io(
            search, routed.space, clip.vector, top_n, report.speech_s, narrow, report.snr_db
        )
        return dataclasses.replace(
            result,
            language=routed.language,
            confidence=routed.confidence,
            language_source=routed.source,
            quality=report,
        )

    # --- enrollment ---------------------------------------------------------------------------
    async def _embed_files(
        self, files: list[bytes], language: str | None
    ) -> list[tuple[UtteranceInput, QualityReport]]:
        """Every file decoded first (a bad one fails the request before any embedding), then
        embedded; each file's decoding and embedding is its own inference step, so other
        requests' steps interleave with a long enrollment's."""
        self.enrollment.require_encoders()
        check_language(language)
        async with self.pipeline.queue.admitted():
            decoded = [
                await self.pipeline.infer(self.enrollment.decode_file, position, data)
                for position, data in enumerate(files)
            ]
            return [
                await self.pipeline.infer(self.enrollment.embed_decoded, audio, report, language)
                for audio, report in decoded
            ]

    async def enroll(
        self,
        files: list[bytes],
        *,
        external_id: str | None,
        name: str | None,
        metadata: dict[str, Any] | None,
        language: str | None,
        actor: Actor = ANONYMOUS,
        audit_details: dict[str, Any] | None = None,
    ) -> EnrollmentResult:
        """``audit_details``: added to the audit row (where the audio came from)."""
        external_id = None if external_id is None else normalise_external_id(external_id)
        self.enrollment.check_new_speaker(files, external_id, name, metadata)
        assessed = await self._embed_files(files, language)

        def write() -> EnrollmentResult:
            return self.enrollment.create(
                assessed,
                external_id=external_id,
                name=name,
                metadata=metadata,
                actor=actor,
                audit_details=audit_details,
            )

        result = await self._io(self._written, write)
        self._snapshot_soon()
        return result

    async def add_utterances(
        self,
        external_id: str,
        files: list[bytes],
        language: str | None,
        actor: Actor = ANONYMOUS,
        audit_details: dict[str, Any] | None = None,
    ) -> EnrollmentResult:
        external_id = normalise_external_id(external_id)
        self.enrollment.check_file_count(files)
        await self.get_speaker(external_id)  # 404 before spending inference on a wrong id
        assessed = await self._embed_files(files, language)
        result = await self._io(
            self._written, lambda: self.enrollment.add(external_id, assessed, actor, audit_details)
        )
        self._snapshot_soon()
        return result

    # --- speaker management -------------------------------------------------------------------
    async def get_speaker(self, external_id: str) -> SpeakerRecord:
        return await self._io(self.speakers.get, normalise_external_id(external_id))

    async def list_speakers(
        self, *, offset: int, limit: int, name: str | None, metadata: dict[str, Any] | None
    ) -> tuple[list[SpeakerRecord], int]:
        return await self._io(
            lambda: self.speakers.list(offset=offset, limit=limit, name=name, metadata=metadata)
        )

    async def update_speaker(
        self, external_id: str, changes: dict[str, Any], actor: Actor = ANONYMOUS
    ) -> SpeakerRecord:
        self.speakers.check_update(changes)
        return await self._io(
            self.speakers.update, normalise_external_id(external_id), changes, actor
        )

    async def delete_speaker(self, external_id: str, actor: Actor = ANONYMOUS) -> str:
        """Delete a speaker; returns its (normalised) external id."""
        external_id = normalise_external_id(external_id)
        await self._io(self._written, lambda: self.speakers.delete(external_id, actor))
        self._snapshot_soon()
        return external_id

    # --- reads for operators ------------------------------------------------------------------
    @property
    def models_loaded(self) -> bool:
        """Every configured model is loaded (no I/O: safe on the event loop)."""
        return self.models.all_loaded

    def _health(self) -> Health:
        statuses = self.models.statuses
        spaces = {
            role: SpaceHealth(
                available=status.loaded,
                indexed_speakers=self.gallery.size(role) if status.loaded else None,
                threshold=self.threshold(role),
            )
            for role, status in statuses.items()
            if role != LANGID_ROLE
        }
        return Health(
            models=dict(statuses),
            all_loaded=self.models.all_loaded,
            spaces=spaces,
            inference=self.pipeline.queue.depth(),
        )

    async def health(self) -> Health:
        """Which models are loaded; per space, searchable speakers and threshold; the inference
        queue. In a thread: the index size and the threshold may read SQLite."""
        return await self._io(self._health)

    def _calibration_in_force(self) -> list[SpaceCalibration]:
        self.policy.refresh()
        decisions = {s: self.decision(s) for s in self.models.statuses if s != LANGID_ROLE}
        return [
            SpaceCalibration(
                space=space,
                model_identity=self.models.statuses[space].identity,
                decision=decision,
                asnorm=self.normalizer is not None and self.normalizer.enabled(space),
                cohort=self.scoring[space].cohort_status if space in self.scoring else None,
                narrowband=self.narrowband_status.get(space),
                strict_bars=self._strict_bars(space, decision),
            )
            for space, decision in decisions.items()
        ]

    def _strict_bars(self, space: str, decision: Decision) -> dict[str, dict[str, float]] | None:
        """Per quality class, what its probes' pairs are held to now, per pair type, each on
        its own scale: type A (wideband probes) the higher of the pooled and the class's t(N);
        the telephone-band types, where this space has telephone-band profiles, their bars."""
        strict, fpir, pooled = decision.strict, decision.fpir_target, decision.tail
        if strict is None or fpir is None or pooled is None:
            return None
        n = decision.gallery_size or 0
        view = self.views.get(space)
        out: dict[str, dict[str, float]] = {}
        for rule in strict:
            bars: dict[str, float] = {}
            if PAIR_WIDEBAND in rule.tails:
                bars[PAIR_WIDEBAND] = rule.threshold(PAIR_WIDEBAND, pooled, fpir, n)
            if view is not None:
                for pair, bar in view.bars(rule, fpir, n).items():
                    if pair != PAIR_WIDEBAND and pair in rule.tails:
                        bars[pair] = bar.threshold
            out[rule.name] = bars
        return out

    async def index_stats(self) -> list[IndexStats]:
        """Per loaded space: index size and type, and how old its snapshot file is."""

        def read() -> list[IndexStats]:
            newest = self.gallery.store.change_cursor().seq  # one query for every space
            # How far behind this worker was (changes since its last search), then catch up so
            # the sizes reported are the database's, not those of the worker's last search.
            spaces = list(self.gallery.dims)
            behind = {space: max(0, newest - self.gallery.version(space)[1]) for space in spaces}
            self.gallery.sync()
            stats = []
            for space in self.gallery.dims:
                age = self.gallery.snapshot_age_s(space)
                size = self.gallery.size(space)
                kind = self.gallery.index_kind(space)
                stats.append(IndexStats(space, size, kind, age, behind[space]))
            return stats

        return await self._io(read)

    async def calibration_in_force(self) -> list[SpaceCalibration]:
        """Per space: the decision in force, re-read from the database first (in a thread)."""
        return await self._io(self._calibration_in_force)

    async def audit_entries(
        self, *, offset: int, limit: int, speaker: str | None
    ) -> tuple[list[AuditRow], int]:
        """The audit log, newest first (``speaker``: only entries about that external id)."""
        speaker = None if speaker is None else normalise_external_id(speaker)
        return await self._io(
            lambda: audit.list_entries(
                self.store.session_factory,
                limit=limit,
                offset=offset,
                speaker_external_id=speaker,
            )
        )
