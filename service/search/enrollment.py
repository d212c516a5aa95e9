"""Enrollment: files → utterances embedded in every loaded space → a stored speaker.

Every file is decoded first (any bad file fails the whole request before anything is stored,
and its error names the file), then each clip is embedded in every loaded space (the whole
decoded clip; the VAD only measures its net speech) and all of it is written in one
transaction. Blocking; ``service.search.voicesearch`` runs :meth:`Enrollment.embed_files` under
the inference limiter and the writes in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.core import errors
from service.core.settings import Settings
from service.pipeline.audio import DecodedAudio
from service.pipeline.clip import ClipPipeline
from service.pipeline.quality import QualityReport
from service.search.enrollment_amount import EnrollmentAmount, EnrollmentPolicy
from service.search.fields import check_external_id, check_name
from service.search.speakers import check_speaker_metadata, translate_storage_errors
from storage import audit
from storage.audit import Actor, AuditRecord
from storage.records import SpeakerRecord, UtteranceInput, UtteranceRecord
from storage.speakers import SpeakerStore


@dataclass(frozen=True)
class EnrollmentResult:
    speaker: SpeakerRecord
    utterances: list[UtteranceRecord]
    reports: list[QualityReport]  # one per uploaded file, in upload order
    required_speech_s: float  # net speech a speaker needs before being searchable
    amount: EnrollmentAmount  # net speech, tier, searchable (and why not), warnings


class Enrollment:
    def __init__(self, settings: Settings, pipeline: ClipPipeline, store: SpeakerStore) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.store = store

    # --- checks before any inference ----------------------------------------------------------
    def check_file_count(self, files: list[bytes]) -> None:
        if not files:
            raise errors.InvalidInput("at least one audio file is required")
        if len(files) > self.settings.max_files_per_enrollment:
            raise errors.InvalidInput(
                f"at most {self.settings.max_files_per_enrollment} files per request",
                details={"files": len(files)},
            )

    def check_new_speaker(
        self,
        files: list[bytes],
        external_id: str | None,
        name: str | None,
        metadata: dict[str, Any] | None,
    ) -> None:
        self.check_file_count(files)
        check_external_id(external_id)
        check_name(name)
        check_speaker_metadata(self.settings, metadata)

    # --- inference ----------------------------------------------------------------------------
    def embed_files(
        self, files: list[bytes], language: str | None
    ) -> list[tuple[UtteranceInput, QualityReport]]:
        """Decode every file first, then embed each utterance in every loaded space."""
        if not self.pipeline.models.encoders:
            raise errors.ModelUnavailable(
                "no speaker encoder is loaded; see /health",
                details={r: s.error for r, s in self.pipeline.models.statuses.items() if s.error},
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

    # --- writes -------------------------------------------------------------------------------
    def _result(
        self,
        written: tuple[SpeakerRecord, list[UtteranceRecord]],
        assessed: list[tuple[UtteranceInput, QualityReport]],
    ) -> EnrollmentResult:
        speaker, utterances = written
        policy = EnrollmentPolicy.from_settings(self.settings)
        return EnrollmentResult(
            speaker,
            utterances,
            [r for _, r in assessed],
            policy.required_speech_s,
            policy.amount(speaker.speech_s, bool(speaker.spaces)),
        )

    def create(
        self,
        assessed: list[tuple[UtteranceInput, QualityReport]],
        *,
        external_id: str | None,
        name: str | None,
        metadata: dict[str, Any] | None,
        actor: Actor,
    ) -> EnrollmentResult:
        record = AuditRecord(audit.ACTION_ENROLL, actor, {"files": len(assessed)})
        with translate_storage_errors():
            written = self.store.create_speaker(
                external_id=external_id,
                name=name,
                metadata=metadata,
                utterances=[utt for utt, _ in assessed],
                audit=record,
            )
        return self._result(written, assessed)

    def add(
        self,
        external_id: str,
        assessed: list[tuple[UtteranceInput, QualityReport]],
        actor: Actor,
    ) -> EnrollmentResult:
        record = AuditRecord(audit.ACTION_ADD_UTTERANCES, actor, {"files": len(assessed)})
        with translate_storage_errors():
            written = self.store.add_utterances(
                external_id, [utt for utt, _ in assessed], audit=record
            )
        return self._result(written, assessed)
