"""Enrollment: files → utterances embedded in every loaded space → a stored speaker.

Every file is decoded first (any bad file fails the whole request before anything is stored,
and its error names the file), then each clip is embedded in every loaded space (the whole
decoded clip; the VAD only measures its net speech) and all of it is written in one
transaction. Blocking, one file per call: ``service.search.voicesearch`` runs
:meth:`Enrollment.decode_file` and :meth:`Enrollment.embed_decoded` as separate inference steps
(so searches interleave with a 20-file enrollment) and the writes in a worker thread.

A clip is identified by the hash of its decoded samples (``DecodedAudio.upload_sha256``):
uploading the same file again is a no-op. Rows stored by releases that trimmed silence hold the
hash of the trimmed samples (``legacy_sha256`` is matched too when a trimmed copy exists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.core import errors
from service.core.settings import Settings
from service.decisions.bandwidth import NarrowbandView, is_narrowband
from service.pipeline.audio import DecodedAudio
from service.pipeline.clip import ClipPipeline
from service.pipeline.quality import QualityReport
from service.search.enrollment_amount import EnrollmentAmount, EnrollmentPolicy
from service.search.fields import check_external_id, check_name
from service.search.speakers import check_speaker_metadata
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
    def __init__(
        self,
        settings: Settings,
        pipeline: ClipPipeline,
        store: SpeakerStore,
        views: Sequence[NarrowbandView] = (),
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.store = store
        #: Spaces with telephone-band profiles: each clip is also embedded into ``view.derived``.
        self.views = tuple(views)

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

    # --- inference, one file per step ---------------------------------------------------------
    def require_encoders(self) -> None:
        if not self.pipeline.models.encoders:
            raise errors.ModelUnavailable(
                "no speaker encoder is loaded; see /health",
                details={r: s.error for r, s in self.pipeline.models.statuses.items() if s.error},
            )

    def decode_file(self, position: int, data: bytes) -> tuple[DecodedAudio, QualityReport]:
        """Decode and assess one uploaded file; an error names the file (``file_index``)."""
        try:
            return self.pipeline.decode_assessed(data)
        except errors.ServiceError as exc:
            exc.details = {**exc.details, "file_index": position}
            raise

    def embed_decoded(
        self, audio: DecodedAudio, report: QualityReport, language: str | None
    ) -> tuple[UtteranceInput, QualityReport]:
        """One decoded clip's language and its embedding in every loaded space."""
        routed = self.pipeline.route_or_default(audio, language)
        embeddings = self.pipeline.embed_everywhere(audio)
        for view in self.views:
            if view.space not in embeddings:
                continue
            # A clip that is telephone band already goes into the profile as it is; a wideband
            # one is first passed through the telephone chain.
            embeddings[view.derived] = (
                embeddings[view.space]
                if is_narrowband(audio.source_sample_rate)
                else self.pipeline.embed_telephone(audio, view.space)
            )
        utterance = UtteranceInput(
            sha256=audio.upload_sha256,
            language=routed.language,
            language_confidence=routed.confidence,
            duration_s=report.duration_s,
            embeddings=embeddings,
            speech_s=report.speech_s,
            legacy_sha256=audio.sha256 if audio.trimmed_from is not None else None,
            source_sample_rate=audio.source_sample_rate,
        )
        return utterance, report

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
        audit_details: dict[str, Any] | None = None,
    ) -> EnrollmentResult:
        details = {"files": len(assessed), **(audit_details or {})}
        record = AuditRecord(audit.ACTION_ENROLL, actor, details)
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
        audit_details: dict[str, Any] | None = None,
    ) -> EnrollmentResult:
        details = {"files": len(assessed), **(audit_details or {})}
        record = AuditRecord(audit.ACTION_ADD_UTTERANCES, actor, details)
        written = self.store.add_utterances(external_id, [utt for utt, _ in assessed], audit=record)
        return self._result(written, assessed)
