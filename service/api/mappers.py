"""Domain results → response bodies (``service.api.schemas``): the one place that knows both.

The application layer (``service.search``) answers in records and dataclasses; the routers
return what these functions build, so the JSON shapes clients parse are decided here and in
the schemas, nowhere else.
"""

from __future__ import annotations

from service.api.recording_schemas import (
    FoundSpeakerOut,
    IdentifySpeakersResponse,
    TimelineSegmentOut,
)
from service.api.schemas import (
    AuditEntryOut,
    CalibrationResponse,
    CalibrationSpaceOut,
    CompareVoicesResponse,
    DetectLanguageResponse,
    EnrollmentResponse,
    ExtractEmbeddingResponse,
    FindMatchResponse,
    HealthResponse,
    InferenceHealth,
    LanguageCandidateOut,
    MatchOut,
    ModelHealth,
    QualityOut,
    SpaceHealth,
    SpeakerOut,
    StrictTailFitOut,
    StrictTailOut,
    UtteranceOut,
)
from service.pipeline.clip import EmbeddedClip
from service.pipeline.quality import QualityReport
from service.recordings.identify import RecordingResult
from service.search.enrollment import EnrollmentResult
from service.search.enrollment_amount import EnrollmentAmount, EnrollmentPolicy
from service.search.matching import Comparison, Match, MatchResult
from service.search.voicesearch import DetectedLanguage, Health, SpaceCalibration
from storage.audit import AuditRow
from storage.records import SpeakerRecord, UtteranceRecord


def quality_out(report: QualityReport) -> QualityOut:
    return QualityOut(**report.to_dict())


def _amount_fields(amount: EnrollmentAmount) -> dict:
    return {
        "recommended_speech_seconds": amount.recommended_speech_s,
        "enrollment_tier": amount.tier,
        "reason": amount.reason,
        "warnings": list(amount.warnings),
    }


def speaker_out(record: SpeakerRecord, policy: EnrollmentPolicy | None = None) -> SpeakerOut:
    # Searchable means "has a profile in the index"; an incomplete enrollment has none.
    searchable = bool(record.spaces)
    amount = policy.amount(record.speech_s, searchable) if policy is not None else None
    return SpeakerOut(
        id=record.external_id,
        name=record.name,
        metadata=record.metadata,
        utterance_count=record.utterance_count,
        spaces=record.spaces,
        created_at=record.created_at,
        updated_at=record.updated_at,
        speech_seconds=round(record.speech_s, 3),
        required_speech_seconds=None if policy is None else policy.required_speech_s,
        searchable=searchable,
        **(_amount_fields(amount) if amount is not None else {}),
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


def enrollment_out(result: EnrollmentResult) -> EnrollmentResponse:
    amount = result.amount
    out = speaker_out(
        result.speaker, EnrollmentPolicy(amount.required_speech_s, amount.recommended_speech_s)
    )
    return EnrollmentResponse(
        speaker=out,
        utterances=[
            utterance_out(u).model_copy(update={"quality": quality_out(r)})
            for u, r in zip(result.utterances, result.reports, strict=True)
        ],
        speech_seconds=out.speech_seconds,
        required_speech_seconds=amount.required_speech_s,
        missing_speech_seconds=round(amount.missing_speech_s, 3),
        searchable=out.searchable,
        **_amount_fields(amount),
    )


def match_out(match: Match) -> MatchOut:
    return MatchOut(**vars(match))  # the same fields, by design


def find_match_out(result: MatchResult) -> FindMatchResponse:
    top = [match_out(m) for m in result.matches]
    best = top[0] if top else None
    return FindMatchResponse(
        best_match=best,
        top_matches=top,
        threshold=result.decision.threshold,
        space=result.space,
        language=result.language,
        language_confidence=result.confidence,
        confidence=result.confidence,
        language_source=result.language_source,
        searched=result.searched,
        decision=result.verdict,
        match=best if result.match is not None else None,
        reason=result.reason,
        score_type=result.decision.score_type,
        probe_band=result.probe_band,
        band_note=result.band_note,
        threshold_source=result.decision.source,
        threshold_rule=result.decision.rule,
        fpir_target=result.decision.fpir_target,
        gallery_size=result.decision.gallery_size,
        threshold_note=result.decision.note,
        threshold_quality=result.decision.quality,
        quality=quality_out(result.quality) if result.quality is not None else None,
    )


def comparison_out(comparison: Comparison) -> CompareVoicesResponse:
    return CompareVoicesResponse(**vars(comparison))  # the same fields, by design


def extraction_out(clip: EmbeddedClip) -> ExtractEmbeddingResponse:
    routed = clip.routed
    return ExtractEmbeddingResponse(
        embedding=clip.vector.tolist(),
        embedding_size=int(clip.vector.shape[0]),
        language=routed.language or "unknown",
        language_confidence=routed.confidence if routed.confidence is not None else 0.0,
        confidence=routed.confidence if routed.confidence is not None else 0.0,
        language_source=routed.source or "unknown",
        space=routed.space,
        model=clip.model,
        # The decoded clip's duration (as everywhere); the embedded speech is quality.speech_s.
        duration_s=round(clip.quality.duration_s, 3),
    )


def language_out(found: DetectedLanguage) -> DetectLanguageResponse:
    detection = found.detection
    return DetectLanguageResponse(
        language=detection.language,
        name=detection.name,
        confidence=detection.confidence,
        candidates=[LanguageCandidateOut(**vars(c)) for c in detection.candidates],
        space=found.space,
        duration_s=round(found.duration_s, 3),
    )


def _status(all_loaded: bool) -> str:
    return "healthy" if all_loaded else "degraded"


def health_status(all_loaded: bool, *, auth_enabled: bool) -> HealthResponse:
    """What ``/health`` tells a caller without a key: whether it is up, and that keys are on."""
    auth = "enabled" if auth_enabled else "disabled"
    return HealthResponse(status=_status(all_loaded), auth=auth)


def health_out(health: Health, *, version: str, auth_enabled: bool) -> HealthResponse:
    depth = health.inference
    return HealthResponse(
        status=_status(health.all_loaded),
        models_loaded=health.all_loaded,
        loaded_models=[role for role, s in health.models.items() if s.loaded],
        models={
            role: ModelHealth(
                enabled=s.enabled,
                loaded=s.loaded,
                source=s.source,
                identity=s.identity,
                error=s.error,
                error_kind=s.error_kind,
                load_seconds=s.load_seconds,
                backend=s.backend,
            )
            for role, s in health.models.items()
        },
        spaces={
            space: SpaceHealth(
                available=s.available, indexed_speakers=s.indexed_speakers, threshold=s.threshold
            )
            for space, s in health.spaces.items()
        },
        inference=InferenceHealth(
            running=depth.running,
            waiting=depth.waiting,
            admitted=depth.admitted,
            concurrency=depth.concurrency,
            max_queue=depth.max_waiting,
        ),
        version=version,
        auth="enabled" if auth_enabled else "disabled",
    )


def strict_tails_out(space: SpaceCalibration) -> list[StrictTailOut]:
    """The stricter tails of the probe quality classes of the rule in force (shipped, or a
    calibration's own), as /calibration shows them: only the pair types this space can use (B
    needs its telephone-band profiles)."""
    strict, bars = space.decision.strict, space.strict_bars
    if strict is None or not bars:
        return []
    out = []
    for rule in strict:
        held = bars.get(rule.name) or {}
        if not held:
            continue
        out.append(
            StrictTailOut(
                name=rule.name,
                min_speech_s=rule.min_speech_s,
                max_speech_s=rule.max_speech_s,
                min_snr_db=rule.min_snr_db,
                max_snr_db=rule.max_snr_db,
                tails={
                    pair: StrictTailFitOut(u=t.u, beta=t.beta, mass=t.mass, threshold=held[pair])
                    for pair, t in rule.tails.items()
                    if pair in held
                },
            )
        )
    return out


def calibration_out(spaces: list[SpaceCalibration]) -> CalibrationResponse:
    out: dict[str, CalibrationSpaceOut] = {}
    for space in spaces:
        decision = space.decision
        record = decision.record
        details = record.details if record else {}
        tail = decision.tail
        out[space.space] = CalibrationSpaceOut(
            space=space.space,
            model_identity=space.model_identity,
            threshold=decision.threshold,
            score_type=decision.score_type,
            source=decision.source,
            setting=decision.setting,
            rule=decision.rule,
            fpir_target=decision.fpir_target,
            gallery_size=decision.gallery_size,
            note=decision.note,
            tail={"u": tail.u, "beta": tail.beta, "mass": tail.mass} if tail else None,
            thresholds_by_gallery_size=(
                {f"{n}": round(decision.at_size(n).threshold, 4) for n in SIZES_SHOWN}
                if tail
                else None
            ),
            strict_tails=strict_tails_out(space),
            cohort=space.cohort,
            narrowband_profiles=space.narrowband,
            fpir=details.get("fpir"),
            fnir=details.get("fnir"),
            calibrated_gallery_size=details.get("gallery_size"),
            calibrated_at=record.created_at if record else None,
            target_far=record.target_far if record and not tail else None,
            far=record.far if record else None,
            frr=record.frr if record else None,
            eer=record.eer if record else None,
            n_genuine=record.n_genuine if record else None,
            n_impostor=record.n_impostor if record else None,
            n_speakers=record.n_speakers if record else None,
            data=record.source if record else None,
            match_probability=decision.logistic is not None,
            asnorm=space.asnorm,
        )
    return CalibrationResponse(spaces=out)


#: Gallery sizes /calibration shows t(N) for.
SIZES_SHOWN = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)


def audit_entry_out(row: AuditRow) -> AuditEntryOut:
    return AuditEntryOut(
        id=row.id,
        created_at=row.created_at,
        action=row.action,
        speaker_id=row.speaker_external_id,
        actor=row.actor,
        role=row.role,
        details=row.details,
    )


def identify_speakers_out(result: RecordingResult) -> IdentifySpeakersResponse:
    decision = result.speakers[0].result.decision if result.speakers else None
    speakers = []
    for found in result.speakers:
        best = found.result.best_match
        token = result.tokens.get(found.label)
        speakers.append(
            FoundSpeakerOut(
                speaker=found.label,
                enrolled=found.result.match is not None,
                name=found.result.match.name if found.result.match is not None else None,
                decision=found.result.verdict,
                reason=found.result.reason,
                score=None if best is None else best.score,
                match_probability=None if best is None else best.match_probability,
                pair_type=None if best is None else best.pair_type,
                speech_s=round(found.speech_s, 3),
                snr_db=None if found.snr_db is None else round(found.snr_db, 1),
                threshold=found.result.decision.threshold,
                threshold_quality=found.result.decision.quality,
                segments=found.segments,
                candidates=[match_out(m) for m in found.result.matches],
                enroll_token=None if token is None else token.token,
                enroll_token_expires_at=None if token is None else token.expires_at,
            )
        )
    routed = result.routed
    return IdentifySpeakersResponse(
        duration_s=round(result.duration_s, 3),
        speech_s=round(result.speech_s, 3),
        space=routed.space,
        language=routed.language,
        language_confidence=routed.confidence,
        language_source=routed.source,
        threshold=decision.threshold if decision is not None else 0.0,
        score_type=decision.score_type if decision is not None else "cosine",
        threshold_source=decision.source if decision is not None else "default",
        num_speakers=len(speakers),
        speakers=speakers,
        segments=[
            TimelineSegmentOut(
                start=round(s.start, 3),
                end=round(s.end, 3),
                speaker=s.speaker,
                score=round(s.score, 4),
            )
            for s in result.segments
        ],
    )
