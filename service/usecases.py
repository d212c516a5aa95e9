"""The product's verbs: extract, detect, compare, search, enroll, manage speakers.

Routers call these and nothing else; these call audio decoding, the models and routing on one
side and the speaker store and gallery on the other. Blocking work (decoding, inference, SQLite,
FAISS) runs in worker threads so the event loop stays responsive; model inference is additionally
bounded by ``inference_concurrency`` because on a small CPU box one inference already uses every
core.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import numpy as np

from service import errors
from service.audio import DecodedAudio, decode_audio, ensure_speech
from service.gallery import Gallery
from service.models import LanguageDetection, ModelRegistry
from service.routing import LanguageRouter, normalise_language
from service.schemas import (
    CompareVoicesResponse,
    DetectLanguageResponse,
    EnrollmentResponse,
    ExtractEmbeddingResponse,
    FindMatchResponse,
    LanguageCandidateOut,
    MatchOut,
    SpeakerListResponse,
    SpeakerOut,
    StoredEmbedding,
    UtteranceOut,
)
from service.settings import SPACE_VOXCELEB, Settings
from storage import errors as storage_errors
from storage.repository import UNSET, SpeakerRecord, SpeakerStore, UtteranceInput, UtteranceRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

LANGUAGE_FROM_CALLER = "caller"
LANGUAGE_DETECTED = "detected"


@dataclass(frozen=True)
class RoutedLanguage:
    language: str | None
    confidence: float | None
    source: str | None  # "caller", "detected", or None when unknown (no language-ID model)
    space: str


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
    ) -> None:
        self.settings = settings
        self.models = models
        self.router = router
        self.store = store
        self.gallery = gallery
        self._inference_limiter = anyio.CapacityLimiter(settings.inference_concurrency)

    # --- plumbing -----------------------------------------------------------------------------
    async def _infer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run model work in a thread, at most ``inference_concurrency`` at once."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._inference_limiter)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run database / index work in a thread."""
        return await anyio.to_thread.run_sync(fn, *args)

    def threshold(self, space: str) -> float:
        return self.settings.threshold_for(space)

    def _decode(self, data: bytes) -> DecodedAudio:
        audio = decode_audio(
            data,
            max_duration_s=self.settings.max_duration_s,
            min_duration_s=self.settings.min_duration_s,
        )
        ensure_speech(audio, min_speech_s=self.settings.min_speech_s)
        return audio

    def _route(self, audio: DecodedAudio, language: str | None) -> RoutedLanguage:
        """Use the caller's language, else detect it; then pick the encoder space."""
        if language:
            code = normalise_language(language)
            return RoutedLanguage(code, 1.0, LANGUAGE_FROM_CALLER, self.router.space_for(code))
        detection = self.models.require_language_identifier().detect(audio.samples)
        return RoutedLanguage(
            detection.language,
            detection.confidence,
            LANGUAGE_DETECTED,
            self.router.space_for(detection.language),
        )

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
        def work() -> tuple[DecodedAudio, LanguageDetection]:
            audio = self._decode(data)
            return audio, self.models.require_language_identifier().detect(audio.samples)

        audio, detection = await self._infer(work)
        return DetectLanguageResponse(
            language=detection.language,
            name=detection.name,
            confidence=detection.confidence,
            candidates=[LanguageCandidateOut(**vars(c)) for c in detection.candidates],
            space=self.router.space_for(detection.language),
            duration_s=round(audio.duration_s, 3),
        )

    def _embed_routed(
        self, data: bytes, language: str | None
    ) -> tuple[DecodedAudio, RoutedLanguage, np.ndarray, str]:
        audio = self._decode(data)
        routed = self._route(audio, language)
        encoder = self.models.encoder(routed.space)
        return audio, routed, encoder.embed(audio.samples), encoder.identity

    async def extract(self, data: bytes, language: str | None) -> ExtractEmbeddingResponse:
        audio, routed, vector, identity = await self._infer(self._embed_routed, data, language)
        return ExtractEmbeddingResponse(
            embedding=vector.tolist(),
            embedding_size=int(vector.shape[0]),
            language=routed.language or "unknown",
            confidence=routed.confidence if routed.confidence is not None else 0.0,
            language_source=routed.source or "unknown",
            space=routed.space,
            model=identity,
            duration_s=round(audio.duration_s, 3),
        )

    def compare(self, e1: list[float], e2: list[float], space: str | None) -> CompareVoicesResponse:
        if len(e1) != len(e2):
            raise errors.InvalidInput(
                "embeddings have different lengths",
                details={"embedding1": len(e1), "embedding2": len(e2)},
            )
        space = self._space_of_request(space, None)
        similarity = float(np.dot(unit(np.array(e1)), unit(np.array(e2))))
        threshold = self.threshold(space)
        return CompareVoicesResponse(
            similarity=similarity,
            is_match=similarity >= threshold,
            threshold=threshold,
            space=space,
        )

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
        threshold = self.threshold(space)
        top_n = self._clamp_top_n(top_n)
        if not candidates:
            return FindMatchResponse(
                best_match=None, top_matches=[], threshold=threshold, space=space, searched=0
            )
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
            )
            for i in order
        ]
        return FindMatchResponse(
            best_match=matches[0],
            top_matches=matches,
            threshold=threshold,
            space=space,
            searched=len(candidates),
        )

    def _clamp_top_n(self, top_n: int) -> int:
        if top_n > self.settings.max_top_n:
            raise errors.InvalidInput(
                f"top_n may be at most {self.settings.max_top_n}",
                details={"top_n": top_n, "max_top_n": self.settings.max_top_n},
            )
        return top_n

    def _search_index(self, space: str, vector: np.ndarray, top_n: int) -> FindMatchResponse:
        dim = self.gallery.dims.get(space)
        if dim is None:
            raise self._space_unavailable(space)
        if vector.shape[0] != dim:
            raise errors.InvalidInput(
                f"embedding has {vector.shape[0]} values; the {space} space uses {dim}",
                details={"expected": dim, "got": int(vector.shape[0])},
            )
        hits = self.gallery.search(space, vector[None, :], top_n)[0]
        speakers = self.store.summaries([hit.speaker_id for hit in hits])
        threshold = self.threshold(space)
        matches = [
            MatchOut(
                id=speakers[hit.speaker_id].external_id,
                name=speakers[hit.speaker_id].name,
                metadata=speakers[hit.speaker_id].metadata,
                similarity=hit.score,
                is_match=hit.score >= threshold,
            )
            # A speaker deleted between the index search and this lookup is simply skipped.
            for hit in hits
            if hit.speaker_id in speakers
        ]
        return FindMatchResponse(
            best_match=matches[0] if matches else None,
            top_matches=matches,
            threshold=threshold,
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
        _, routed, vector, _ = await self._infer(self._embed_routed, data, language)
        result = await self._io(self._search_index, routed.space, vector, top_n)
        return result.model_copy(
            update={
                "language": routed.language,
                "confidence": routed.confidence,
                "language_source": routed.source,
            }
        )

    # --- enrollment ---------------------------------------------------------------------------
    def _utterance_inputs(self, files: list[bytes], language: str | None) -> list[UtteranceInput]:
        """Decode every file first (any bad file fails the whole request before anything is
        stored), then embed each utterance in every loaded space."""
        if not self.models.encoders:
            raise errors.ModelUnavailable(
                "no speaker encoder is loaded; see /health",
                details={r: s.error for r, s in self.models.statuses.items() if s.error},
            )
        decoded: list[DecodedAudio] = []
        for position, data in enumerate(files):
            try:
                decoded.append(self._decode(data))
            except errors.ServiceError as exc:
                exc.details = {**exc.details, "file_index": position}
                raise
        inputs = []
        for audio in decoded:
            routed = self._route_for_enrollment(audio, language)
            embeddings = {
                space: encoder.embed(audio.samples)
                for space, encoder in self.models.encoders.items()
            }
            inputs.append(
                UtteranceInput(
                    sha256=audio.sha256,
                    language=routed.language,
                    language_confidence=routed.confidence,
                    duration_s=audio.duration_s,
                    embeddings=embeddings,
                )
            )
        return inputs

    def _route_for_enrollment(self, audio: DecodedAudio, language: str | None) -> RoutedLanguage:
        # Enrollment embeds in every space, so the language is only recorded, never required:
        # without a language-ID model, enrollment still works and stores "unknown".
        if language or self.models.language_identifier is not None:
            return self._route(audio, language)
        return RoutedLanguage(None, None, None, SPACE_VOXCELEB)

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
    ) -> EnrollmentResponse:
        self._check_file_count(files)
        inputs = await self._infer(self._utterance_inputs, files, language)

        def write() -> tuple[SpeakerRecord, list[UtteranceRecord]]:
            with translate_storage_errors():
                return self.store.create_speaker(
                    external_id=external_id, name=name, metadata=metadata, utterances=inputs
                )

        speaker, utterances = await self._io(write)
        await self._io(self.gallery.maybe_snapshot)
        return EnrollmentResponse(
            speaker=speaker_out(speaker), utterances=[utterance_out(u) for u in utterances]
        )

    async def add_utterances(
        self, external_id: str, files: list[bytes], language: str | None
    ) -> EnrollmentResponse:
        self._check_file_count(files)
        await self.get_speaker(external_id)  # 404 before spending inference on a wrong id
        inputs = await self._infer(self._utterance_inputs, files, language)

        def write() -> tuple[SpeakerRecord, list[UtteranceRecord]]:
            with translate_storage_errors():
                return self.store.add_utterances(external_id, inputs)

        speaker, utterances = await self._io(write)
        await self._io(self.gallery.maybe_snapshot)
        return EnrollmentResponse(
            speaker=speaker_out(speaker), utterances=[utterance_out(u) for u in utterances]
        )

    # --- speaker management -------------------------------------------------------------------
    async def get_speaker(self, external_id: str) -> SpeakerOut:
        def read() -> SpeakerRecord:
            with translate_storage_errors():
                return self.store.get(external_id)

        return speaker_out(await self._io(read))

    async def list_speakers(
        self, *, offset: int, limit: int, name: str | None, metadata: dict[str, Any] | None
    ) -> SpeakerListResponse:
        records, total = await self._io(
            lambda: self.store.list(offset=offset, limit=limit, name=name, metadata=metadata)
        )
        return SpeakerListResponse(
            speakers=[speaker_out(r) for r in records], total=total, offset=offset, limit=limit
        )

    async def update_speaker(self, external_id: str, changes: dict[str, Any]) -> SpeakerOut:
        def write() -> SpeakerRecord:
            with translate_storage_errors():
                return self.store.update(
                    external_id,
                    name=changes.get("name", UNSET),
                    metadata=changes.get("metadata", UNSET),
                )

        return speaker_out(await self._io(write))

    async def delete_speaker(self, external_id: str) -> None:
        def write() -> None:
            with translate_storage_errors():
                self.store.delete(external_id)

        await self._io(write)
        await self._io(self.gallery.maybe_snapshot)


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


def speaker_out(record: SpeakerRecord) -> SpeakerOut:
    return SpeakerOut(
        id=record.external_id,
        name=record.name,
        metadata=record.metadata,
        utterance_count=record.utterance_count,
        spaces=record.spaces,
        created_at=record.created_at,
        updated_at=record.updated_at,
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
    )
