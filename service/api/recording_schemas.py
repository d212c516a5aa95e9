"""Response bodies of ``POST /identify-speakers`` (kept apart from ``schemas.py``: one resource,
one module; ``MatchOut`` is shared with find-match)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from service.api.schemas import MatchOut


class FoundSpeakerOut(BaseModel):
    speaker: str = Field(
        description="The enrolled speaker's id when `decision` is `match`, else `unknown_1`, "
        "`unknown_2`… in order of first appearance. The `speaker` of timeline segments."
    )
    enrolled: bool = Field(description="Whether this voice matched an enrolled speaker.")
    name: str | None = Field(None, description="The enrolled speaker's name, when matched.")
    decision: str = Field(
        description="The find-match decision for this voice: `match`, `no_match` or "
        "`undecided` (less than the minimum probe speech was heard)."
    )
    reason: str | None = Field(
        None,
        description="Why there is no match: `below_threshold`, `insufficient_speech`, "
        "`empty_gallery`.",
    )
    score: float | None = Field(
        None, description="The closest enrolled speaker's decision score (cosine or AS-norm)."
    )
    match_probability: float | None = None
    pair_type: str | None = Field(
        None,
        description="Narrowband recordings: the pair type that decided the closest speaker "
        "(see find-match's `pair_type`).",
    )
    speech_s: float = Field(description="Speech attributed to this voice (s).")
    snr_db: float | None = Field(
        None,
        description="Estimated SNR over this voice's segments (dB), as find-match's. Where two "
        "clusters were one enrolled voice, this, `threshold` and `threshold_quality` are those "
        "of the cluster whose answer was kept (`speech_s` is both together).",
    )
    threshold: float = Field(
        description="The bar this voice's `score` was decided against: the space's t(N), or "
        "the higher one of its probe quality class (see find-match's `threshold_quality`)."
    )
    threshold_quality: str | None = Field(
        None,
        description="`long_clean`, `long_noisy` or `medium_clean` when this voice's net speech "
        "and SNR put it in a quality class whose stricter tail raised its bar; null otherwise.",
    )
    segments: int = Field(description="Timeline segments of this voice.")
    candidates: list[MatchOut] = Field(
        description="The `top_n` closest enrolled speakers, best first (as find-match lists)."
    )
    enroll_token: str | None = Field(
        None,
        description="For a voice that matched nobody, when the caller may enroll (an `admin` "
        "key, or auth off): send it as `enroll_token` to `POST /speakers` (a new speaker) or "
        "`POST /speakers/{id}/utterances` (more speech for one) instead of audio. Usable once, "
        "by the same API key, until `enroll_token_expires_at`.",
    )
    enroll_token_expires_at: datetime | None = None


class TimelineSegmentOut(BaseModel):
    start: float = Field(description="Seconds from the start of the recording.")
    end: float
    speaker: str = Field(description="A `speakers[].speaker` label.")
    score: float = Field(
        description="How typical of its speaker this stretch is: mean cosine of its windows to "
        "the speaker's centroid (low values: uncertain attribution, often overlap or a "
        "turn change)."
    )


class IdentifySpeakersResponse(BaseModel):
    success: bool = True
    duration_s: float = Field(description="Decoded recording (s).")
    speech_s: float = Field(description="Speech found by voice activity detection (s).")
    space: str
    language: str | None = None
    language_confidence: float | None = None
    language_source: str | None = None
    threshold: float = Field(
        description="The first voice's threshold; each voice's own is `speakers[].threshold` "
        "(a voice of a probe quality class may be held to a higher one)."
    )
    score_type: str = Field(description="`cosine` or `asnorm`.")
    threshold_source: str = Field(description="`calibrated` or `default`.")
    num_speakers: int = Field(description="Distinct voices found.")
    speakers: list[FoundSpeakerOut] = Field(description="In order of first appearance.")
    segments: list[TimelineSegmentOut] = Field(description="Who speaks when, in time order.")
