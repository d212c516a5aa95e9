"""The product's verbs: extract, detect, compare, search, enroll, manage speakers.

Routers call these and nothing else; these call audio decoding, the models and routing on one
side and the speaker store and gallery on the other. Blocking work (decoding, inference, SQLite,
FAISS) runs in worker threads so the event loop stays responsive; model inference is additionally
bounded by ``inference_concurrency`` because on a small CPU box one inference already uses every
core.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import numpy as np

from service.core import errors
from service.core.settings import SPACE_VOXCELEB, Settings
from service.decisions.normalization import AsNorm
from service.decisions.policy import Decision, DecisionPolicy
from service.gallery import Gallery
from service.limits import check_external_id, check_metadata, check_name
from service.pipeline.audio import DecodedAudio
from service.pipeline.clip import ClipPipeline
from service.pipeline.language import LanguageRouter
from service.pipeline.quality import QualityAssessor, QualityReport
from service.pipeline.registry import ModelRegistry
from service.schemas import (
    CompareVoicesResponse,
    DetectLanguageResponse,
    EnrollmentResponse,
    ExtractEmbeddingResponse,
    FindMatchResponse,
    LanguageCandidateOut,
    MatchOut,
    QualityOut,
    SpeakerListResponse,
    SpeakerOut,
    StoredEmbedding,
    UtteranceOut,
)
from storage import audit
from storage import errors as storage_errors
from storage.audit import ANONYMOUS, Actor, AuditRecord
from storage.calibration import SCORE_ASNORM
from storage.records import UNSET, SpeakerRecord, UtteranceInput, UtteranceRecord
from storage.speakers import SpeakerStore

log = logging.getLogger(__name__)
T = TypeVar("T")


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise errors.InvalidInput("embedding has no direction (zero or non-finite norm)")
    return vector / norm


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
        # by service.app.build_voicesearch; the fallbacks keep hand-built instances working.
        self.quality = quality or QualityAssessor.from_settings(settings.quality())
        self.pipeline = ClipPipeline(settings.clip(), models, router, self.quality)
        identities = {space: enc.identity for space, enc in models.encoders.items()}
        self.policy = policy or DecisionPolicy(settings.decisions(), None, identities)
        if normalizer is None and settings.asnorm_spaces:
            normalizer = AsNorm.from_settings(settings.asnorm(), gallery)
        self.normalizer = normalizer
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

    def threshold(self, space: str) -> float:
        """Threshold in force for ``is_match``: the newest matching calibration, else the
        configured default (see service.decisions.policy.DecisionPolicy)."""
        return self.policy.decision(space).threshold

    def _space_of_request(self, space: str | None, language: str | None) -> str:
        if space:
            if space not in self.models.statuses:
                known = sorted(k for k in self.models.statuses if k != "langid")
                raise errors.UnknownSpace(
                    f"unknown encoder space {space!r}", details={"known_spaces": known}
                )
            return space
        if language:
            return self.router.space_for(language)
        return SPACE_VOXCELEB

    # --- language and embeddings --------------------------------------------------------------
    async def detect_language(self, data: bytes) -> DetectLanguageResponse:
        audio, detection = await self.pipeline.infer(self.pipeline.detect_language, data)
        return DetectLanguageResponse(
            language=detection.language,
            name=detection.name,
            confidence=detection.confidence,
            candidates=[LanguageCandidateOut(**vars(c)) for c in detection.candidates],
            space=self.router.space_for(detection.language),
            duration_s=round(audio.duration_s, 3),
        )

    async def extract(self, data: bytes, language: str | None) -> ExtractEmbeddingResponse:
        clip = await self.pipeline.infer(self.pipeline.embed_routed, data, language)
        routed = clip.routed
        return ExtractEmbeddingResponse(
            embedding=clip.vector.tolist(),
            embedding_size=int(clip.vector.shape[0]),
            language=routed.language or "unknown",
            confidence=routed.confidence if routed.confidence is not None else 0.0,
            language_source=routed.source or "unknown",
            space=routed.space,
            model=clip.model,
            duration_s=round(clip.audio.duration_s, 3),
        )

    def compare(self, e1: list[float], e2: list[float], space: str | None) -> CompareVoicesResponse:
        if len(e1) != len(e2):
            raise errors.InvalidInput(
                "embeddings have different lengths",
                details={"embedding1": len(e1), "embedding2": len(e2)},
            )
        space = self._space_of_request(space, None)
        similarity = float(np.dot(unit(np.array(e1)), unit(np.array(e2))))
        decision = self.policy.cosine_decision(space)
        return CompareVoicesResponse(
            similarity=similarity,
            is_match=similarity >= decision.threshold,
            threshold=decision.threshold,
            space=space,
            match_probability=decision.probability(similarity),
            threshold_source=decision.source,
        )

    def _verdict(
        self,
        matches: list[MatchOut],
        decision: Decision,
        speech_s: float | None,
    ) -> dict[str, Any]:
        """Open-set wording shared by every find-match mode: decision, match, reason."""
        if speech_s is not None and speech_s < self.settings.min_probe_speech_s:
            for m in matches:
                m.is_match = False
            verdict, match, reason = "undecided", None, "insufficient_speech"
        elif not matches:
            verdict, match, reason = "no_match", None, "empty_gallery"
        elif matches[0].is_match:
            verdict, match, reason = "match", matches[0], None
        else:
            verdict, match, reason = "no_match", None, "below_threshold"
        return {
            "best_match": matches[0] if matches else None,
            "top_matches": matches,
            "threshold": decision.threshold,
            "decision": verdict,
            "match": match,
            "reason": reason,
            "score_type": decision.score_type,
            "threshold_source": decision.source,
        }

    # --- matching -----------------------------------------------------------------------------
    def rank_candidates(
        self,
        probe: list[float],
        candidates: list[StoredEmbedding],
        top_n: int,
        space: str | None,
        language: str | None,
    ) -> FindMatchResponse:
        """The original stateless find-match: rank the caller's own candidate embeddings."""
        space = self._space_of_request(space, language)
        decision = self.policy.cosine_decision(space)
        threshold = decision.threshold
        top_n = self._clamp_top_n(top_n)
        if not candidates:
            return FindMatchResponse(**self._verdict([], decision, None), space=space, searched=0)
        wrong = [c.id for c in candidates if len(c.embedding) != len(probe)]
        if wrong:
            raise errors.InvalidInput(
                "stored embeddings must have the same length as user_embedding",
                details={"expected": len(probe), "mismatched_ids": wrong[:20]},
            )
        matrix = np.asarray([c.embedding for c in candidates], dtype=np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        scores = matrix @ unit(np.array(probe))
        order = np.argsort(-scores, kind="stable")[:top_n]
        matches = [
            MatchOut(
                id=candidates[i].id,
                similarity=float(scores[i]),
                is_match=bool(scores[i] >= threshold),
                metadata=candidates[i].metadata,
                score=float(scores[i]),
                match_probability=decision.probability(float(scores[i])),
            )
            for i in order
        ]
        return FindMatchResponse(
            **self._verdict(matches, decision, None), space=space, searched=len(candidates)
        )

    def _clamp_top_n(self, top_n: int) -> int:
        if top_n > self.settings.max_top_n:
            raise errors.InvalidInput(
                f"top_n may be at most {self.settings.max_top_n}",
                details={"top_n": top_n, "max_top_n": self.settings.max_top_n},
            )
        return top_n

    def _search_index(
        self, space: str, vector: np.ndarray, top_n: int, speech_s: float | None = None
    ) -> FindMatchResponse:
        dim = self.gallery.dims.get(space)
        if dim is None:
            raise self._space_unavailable(space)
        if vector.shape[0] != dim:
            raise errors.InvalidInput(
                f"embedding has {vector.shape[0]} values; the {space} space uses {dim}",
                details={"expected": dim, "got": int(vector.shape[0])},
            )
        decision = self.policy.decision(space)
        asnorm = decision.score_type == SCORE_ASNORM and self.normalizer is not None
        # With AS-norm the probe's cohort (its top K+1) comes from this same search.
        depth = max(top_n, self.normalizer.top_k + 1) if asnorm else top_n  # type: ignore[union-attr]
        deep = self.gallery.search(space, vector[None, :], depth)[0]
        hits = deep[:top_n]
        speakers = self.store.summaries([hit.speaker_id for hit in hits])
        # A speaker deleted between the index search and this lookup is simply skipped.
        hits = [hit for hit in hits if hit.speaker_id in speakers]
        cosine = self.policy.cosine_decision(space)
        normed: list[float | None] = [hit.score for hit in hits]
        if asnorm:
            normed = self.normalizer.normalise(  # type: ignore[union-attr]
                space,
                vector,
                [hit.speaker_id for hit in hits],
                [hit.score for hit in hits],
                probe_hits=deep,
            )
        matches = []
        for hit, score in zip(hits, normed, strict=True):
            # No cohort statistics (a gallery too small for AS-norm): decide on the cosine.
            used = decision if score is not None else cosine
            value = score if score is not None else hit.score
            matches.append(
                MatchOut(
                    id=speakers[hit.speaker_id].external_id,
                    name=speakers[hit.speaker_id].name,
                    metadata=speakers[hit.speaker_id].metadata,
                    similarity=hit.score,
                    is_match=value >= used.threshold,
                    score=value,
                    match_probability=used.probability(value),
                )
            )
        if decision.score_type == SCORE_ASNORM:
            matches.sort(key=lambda m: -(m.score if m.score is not None else -np.inf))
        return FindMatchResponse(
            **self._verdict(matches, decision, speech_s),
            space=space,
            searched=self.gallery.size(space),
        )

    def _space_unavailable(self, space: str) -> errors.ServiceError:
        status = self.models.statuses.get(space)
        if status is None:
            return errors.UnknownSpace(f"unknown encoder space {space!r}")
        return errors.ModelUnavailable(
            f"the {space} encoder is not loaded: {status.error}", details={"space": space}
        )

    async def search_embedding(
        self, probe: list[float], top_n: int, space: str | None, language: str | None
    ) -> FindMatchResponse:
        space = self._space_of_request(space, language)
        top_n = self._clamp_top_n(top_n)
        return await self._io(self._search_index, space, unit(np.array(probe)), top_n)

    async def search_audio(
        self, data: bytes, language: str | None, top_n: int
    ) -> FindMatchResponse:
        top_n = self._clamp_top_n(top_n)
        clip = await self.pipeline.infer(self.pipeline.embed_routed, data, language)
        routed, report = clip.routed, clip.quality
        result = await self._io(
            self._search_index, routed.space, clip.vector, top_n, report.speech_s
        )
        return result.model_copy(
            update={
                "language": routed.language,
                "confidence": routed.confidence,
                "language_source": routed.source,
                "quality": QualityOut(**report.to_dict()),
            }
        )

    # --- enrollment ---------------------------------------------------------------------------
    def _utterance_inputs(self, files: list[bytes], language: str | None) -> list[UtteranceInput]:
        """Decode every file first (any bad file fails the whole request before anything is
        stored), then embed each utterance in every loaded space (speech only, VAD-trimmed)."""
        return [utt for utt, _ in self._assessed_inputs(files, language)]

    def _assessed_inputs(
        self, files: list[bytes], language: str | None
    ) -> list[tuple[UtteranceInput, QualityReport]]:
        if not self.models.encoders:
            raise errors.ModelUnavailable(
                "no speaker encoder is loaded; see /health",
                details={r: s.error for r, s in self.models.statuses.items() if s.error},
            )
        decoded: list[tuple[DecodedAudio, QualityReport]] = []
        for position, data in enumerate(files):
            try:
                decoded.append(self.pipeline.decode_assessed(data))
            except errors.ServiceError as exc:
                exc.details = {**exc.details, "file_index": position}
                raise
        inputs = []
        for audio, report in decoded:
            routed = self.pipeline.route_or_default(audio, language)
            embeddings = self.pipeline.embed_everywhere(audio)
            inputs.append(
                (
                    UtteranceInput(
                        sha256=audio.sha256,
                        language=routed.language,
                        language_confidence=routed.confidence,
                        duration_s=report.duration_s,
                        embeddings=embeddings,
                        speech_s=report.speech_s,
                    ),
                    report,
                )
            )
        return inputs

    def _enrollment_response(
        self,
        speaker: SpeakerRecord,
        utterances: list[UtteranceRecord],
        reports: list[QualityReport],
    ) -> EnrollmentResponse:
        out = speaker_out(speaker, self.settings.min_enroll_speech_s)
        required = self.settings.min_enroll_speech_s
        return EnrollmentResponse(
            speaker=out,
            utterances=[
                utterance_out(u).model_copy(update={"quality": QualityOut(**r.to_dict())})
                for u, r in zip(utterances, reports, strict=True)
            ],
            speech_seconds=out.speech_seconds,
            required_speech_seconds=required,
            missing_speech_seconds=round(max(0.0, required - speaker.speech_s), 3),
            searchable=out.searchable,
        )

    def _check_metadata(self, metadata: dict[str, Any] | None) -> None:
        check_metadata(
            metadata,
            max_bytes=self.settings.max_metadata_bytes,
            max_depth=self.settings.max_metadata_depth,
        )

    def _check_file_count(self, files: list[bytes]) -> None:
        if not files:
            raise errors.InvalidInput("at least one audio file is required")
        if len(files) > self.settings.max_files_per_enrollment:
            raise errors.InvalidInput(
                f"at most {self.settings.max_files_per_enrollment} files per request",
                details={"files": len(files)},
            )

    async def enroll(
        self,
        files: list[bytes],
        *,
        external_id: str | None,
        name: str | None,
        metadata: dict[str, Any] | None,
        language: str | None,
        actor: Actor = ANONYMOUS,
    ) -> EnrollmentResponse:
        self._check_file_count(files)
        check_external_id(external_id)
        check_name(name)
        self._check_metadata(metadata)
        assessed = await self.pipeline.infer(self._assessed_inputs, files, language)
        inputs = [utt for utt, _ in assessed]
        record = AuditRecord(audit.ACTION_ENROLL, actor, {"files": len(files)})

        def write() -> tuple[SpeakerRecord, list[UtteranceRecord]]:
            with translate_storage_errors():
                return self.store.create_speaker(
                    external_id=external_id,
                    name=name,
                    metadata=metadata,
                    utterances=inputs,
                    audit=record,
                )

        speaker, utterances = await self._io(write)
        self._snapshot_soon()
        return self._enrollment_response(speaker, utterances, [r for _, r in assessed])

    async def add_utterances(
        self,
        external_id: str,
        files: list[bytes],
        language: str | None,
        actor: Actor = ANONYMOUS,
    ) -> EnrollmentResponse:
        self._check_file_count(files)
        await self.get_speaker(external_id)  # 404 before spending inference on a wrong id
        assessed = await self.pipeline.infer(self._assessed_inputs, files, language)
        inputs = [utt for utt, _ in assessed]

        def write() -> tuple[SpeakerRecord, list[UtteranceRecord]]:
            with translate_storage_errors():
                return self.store.add_utterances(
                    external_id,
                    inputs,
                    audit=AuditRecord(audit.ACTION_ADD_UTTERANCES, actor, {"files": len(files)}),
                )

        speaker, utterances = await self._io(write)
        self._snapshot_soon()
        return self._enrollment_response(speaker, utterances, [r for _, r in assessed])

    # --- speaker management -------------------------------------------------------------------
    async def get_speaker(self, external_id: str) -> SpeakerOut:
        def read() -> SpeakerRecord:
            with translate_storage_errors():
                return self.store.get(external_id)

        return speaker_out(await self._io(read), self.settings.min_enroll_speech_s)

    async def list_speakers(
        self, *, offset: int, limit: int, name: str | None, metadata: dict[str, Any] | None
    ) -> SpeakerListResponse:
        records, total = await self._io(
            lambda: self.store.list(offset=offset, limit=limit, name=name, metadata=metadata)
        )
        return SpeakerListResponse(
            speakers=[speaker_out(r) for r in records], total=total, offset=offset, limit=limit
        )

    async def update_speaker(
        self, external_id: str, changes: dict[str, Any], actor: Actor = ANONYMOUS
    ) -> SpeakerOut:
        check_name(changes.get("name"))
        self._check_metadata(changes.get("metadata"))
        # Which fields changed, never their values (metadata may be personal data).
        record = AuditRecord(audit.ACTION_UPDATE, actor, {"fields": sorted(changes)})

        def write() -> SpeakerRecord:
            with translate_storage_errors():
                return self.store.update(
                    external_id,
                    name=changes.get("name", UNSET),
                    metadata=changes.get("metadata", UNSET),
                    audit=record,
                )

        return speaker_out(await self._io(write))

    async def delete_speaker(self, external_id: str, actor: Actor = ANONYMOUS) -> None:
        def write() -> None:
            with translate_storage_errors():
                self.store.delete(external_id, audit=AuditRecord(audit.ACTION_DELETE, actor))

        await self._io(write)
        self._snapshot_soon()


class translate_storage_errors:
    """Map storage's own exceptions onto the service's error vocabulary."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, storage_errors.SpeakerNotFoundError):
            raise errors.SpeakerNotFound(str(exc)) from exc
        if isinstance(exc, storage_errors.DuplicateExternalIdError):
            raise errors.DuplicateSpeaker(str(exc)) from exc
        if isinstance(exc, storage_errors.StorageBusyError):
            raise errors.StorageBusy(str(exc)) from exc


def speaker_out(record: SpeakerRecord, required_speech_s: float | None = None) -> SpeakerOut:
    return SpeakerOut(
        id=record.external_id,
        name=record.name,
        metadata=record.metadata,
        utterance_count=record.utterance_count,
        spaces=record.spaces,
        created_at=record.created_at,
        updated_at=record.updated_at,
        speech_seconds=round(record.speech_s, 3),
        required_speech_seconds=required_speech_s,
        # Searchable means "has a profile in the index"; an incomplete enrollment has none.
        searchable=bool(record.spaces),
    )


def utterance_out(record: UtteranceRecord) -> UtteranceOut:
    return UtteranceOut(
        id=record.id,
        language=record.language,
        confidence=record.language_confidence,
        duration_s=round(record.duration_s, 3),
        spaces=record.spaces,
        created=record.created,
        created_at=record.created_at,
        speech_s=None if record.speech_s is None else round(record.speech_s, 3),
    )
