"""The product's verbs, in one facade the HTTP routers and the CLI call.

:class:`VoiceSearch` composes the parts — the clip pipeline (``service.pipeline.clip``), matching
(``service.search.matching``), enrollment (``service.search.enrollment``), speaker management
(``service.search.speakers``), the gallery and the decision policy — and does the plumbing they
share: blocking work (decoding, inference, SQLite, FAISS) runs in worker threads so the event
loop stays responsive, model inference additionally under the pipeline's limiter, and index
snapshots are refreshed in the background after writes. It returns domain results;
``service.api.mappers`` turns them into response bodies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import numpy as np

from service.core.settings import Settings
from service.decisions.cohort import resolve_scoring
from service.decisions.normalization import AsNorm
from service.decisions.policy import Decision, DecisionPolicy
from service.pipeline.clip import ClipPipeline, EmbeddedClip
from service.pipeline.language import LanguageDetection, LanguageRouter
from service.pipeline.quality import QualityAssessor
from service.pipeline.registry import LANGID_ROLE, ModelRegistry, ModelStatus
from service.search.enrollment import Enrollment, EnrollmentResult
from service.search.gallery import Gallery
from service.search.matching import Candidate, Comparison, Matcher, MatchResult, unit
from service.search.speakers import Speakers
from storage import audit
from storage.audit import ANONYMOUS, Actor, AuditRow
from storage.records import SpeakerRecord
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


@dataclass(frozen=True)
class SpaceCalibration:
    """The decision in force for one space, and what it applies to."""

    space: str
    model_identity: str | None
    decision: Decision  # at the space's current gallery size
    asnorm: bool
    cohort: str | None  # which AS-norm cohort, or why the shipped one is not used


class VoiceSearch:
    """Use cases of the service. One instance per process, built at start-up."""

    def __init__(
        self,
        settings: Settings,
        models: ModelRegistry,
        router: LanguageRouter,
        store: SpeakerStore,
        gallery: Gallery,
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
        self.pipeline = ClipPipeline(settings.clip(), models, router, self.quality)
        self.matcher = Matcher(settings, models, router, store, gallery, self.policy, normalizer)
        self.enrollment = Enrollment(settings, self.pipeline, store)
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
        report, detection = await self.pipeline.infer(self.pipeline.detect_language, data)
        return DetectedLanguage(
            detection, self.router.space_for(detection.language), report.duration_s
        )

    async def extract(self, data: bytes, language: str | None) -> EmbeddedClip:
        return await self.pipeline.infer(self.pipeline.embed_routed, data, language)

    def compare(self, e1: list[float], e2: list[float], space: str | None) -> Comparison:
        return self.matcher.compare(e1, e2, space)

    # --- matching -----------------------------------------------------------------------------
    def rank_candidates(
        self,
        probe: list[float],
        candidates: Sequence[Candidate],
        top_n: int,
        space: str | None,
        language: str | None,
    ) -> MatchResult:
        """The original stateless find-match: rank the caller's own candidate embeddings."""
        return self.matcher.rank_candidates(probe, candidates, top_n, space, language)

    async def search_embedding(
        self, probe: list[float], top_n: int, space: str | None, language: str | None
    ) -> MatchResult:
        space = self.matcher.space_of_request(space, language)
        top_n = self.matcher.clamp_top_n(top_n)
        vector: np.ndarray = unit(np.array(probe))
        return await self._io(self.matcher.search_index, space, vector, top_n)

    async def search_audio(self, data: bytes, language: str | None, top_n: int) -> MatchResult:
        top_n = self.matcher.clamp_top_n(top_n)
        clip = await self.pipeline.infer(self.pipeline.embed_routed, data, language)
        routed, report = clip.routed, clip.quality
        result = await self._io(
            self.matcher.search_index, routed.space, clip.vector, top_n, report.speech_s
        )
        return MatchResult(
            result.matches,
            result.decision,
            result.verdict,
            result.reason,
            space=result.space,
            searched=result.searched,
            language=routed.language,
            confidence=routed.confidence,
            language_source=routed.source,
            quality=report,
        )

    # --- enrollment ---------------------------------------------------------------------------
    async def enroll(
        self,
        files: list[bytes],
        *,
        external_id: str | None,
        name: str | None,
        metadata: dict[str, Any] | None,
        language: str | None,
        actor: Actor = ANONYMOUS,
    ) -> EnrollmentResult:
        self.enrollment.check_new_speaker(files, external_id, name, metadata)
        assessed = await self.pipeline.infer(self.enrollment.embed_files, files, language)

        def write() -> EnrollmentResult:
            return self.enrollment.create(
                assessed, external_id=external_id, name=name, metadata=metadata, actor=actor
            )

        result = await self._io(write)
        self._snapshot_soon()
        return result

    async def add_utterances(
        self,
        external_id: str,
        files: list[bytes],
        language: str | None,
        actor: Actor = ANONYMOUS,
    ) -> EnrollmentResult:
        self.enrollment.check_file_count(files)
        await self.get_speaker(external_id)  # 404 before spending inference on a wrong id
        assessed = await self.pipeline.infer(self.enrollment.embed_files, files, language)
        result = await self._io(self.enrollment.add, external_id, assessed, actor)
        self._snapshot_soon()
        return result

    # --- speaker management -------------------------------------------------------------------
    async def get_speaker(self, external_id: str) -> SpeakerRecord:
        return await self._io(self.speakers.get, external_id)

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
        return await self._io(self.speakers.update, external_id, changes, actor)

    async def delete_speaker(self, external_id: str, actor: Actor = ANONYMOUS) -> None:
        await self._io(self.speakers.delete, external_id, actor)
        self._snapshot_soon()

    # --- reads for operators ------------------------------------------------------------------
    def health(self) -> Health:
        """Which models are loaded, and per space: searchable speakers and threshold."""
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
        return Health(models=dict(statuses), all_loaded=self.models.all_loaded, spaces=spaces)

    async def calibration_in_force(self) -> list[SpaceCalibration]:
        """Per space: the decision in force, re-read from the database first."""
        await anyio.to_thread.run_sync(self.policy.refresh)
        decisions = await anyio.to_thread.run_sync(
            lambda: {s: self.decision(s) for s in self.models.statuses if s != LANGID_ROLE}
        )
        return [
            SpaceCalibration(
                space=space,
                model_identity=self.models.statuses[space].identity,
                decision=decision,
                asnorm=self.normalizer is not None and self.normalizer.enabled(space),
                cohort=self.scoring[space].cohort_status if space in self.scoring else None,
            )
            for space, decision in decisions.items()
        ]

    async def audit_entries(
        self, *, offset: int, limit: int, speaker: str | None
    ) -> tuple[list[AuditRow], int]:
        """The audit log, newest first (``speaker``: only entries about that external id)."""
        return await anyio.to_thread.run_sync(
            lambda: audit.list_entries(
                self.store.session_factory,
                limit=limit,
                offset=offset,
                speaker_external_id=speaker,
            )
        )
