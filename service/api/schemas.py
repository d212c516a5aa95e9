"""Request and response bodies of the HTTP API.

Field descriptions here are what `/docs` shows, so they are written for API users. The shapes of
the original Flask service (`success`, `embedding`, `similarity`, `is_match`, `best_match`,
`top_matches`, …) are kept because clients already parse them; new fields are additive.

Longer than ~400 lines on purpose: the response models of the single-clip endpoints stay in one
module so `/docs` and the mappers have one place to look (identify-speakers bodies live in
``recording_schemas.py``).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.search.fields import MAX_LANGUAGE_LENGTH
from storage.metadata import has_non_finite

# An embedding longer than this cannot come from any model we serve; refusing early keeps a
# hostile body from costing memory and CPU.
MAX_EMBEDDING_DIM = 4096
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MIN_FLOAT32_NORM = 1e-30


def _finite_vector(values: list[float]) -> list[float]:
    # One numpy conversion and vectorised checks: per-float Python loops over a 192-value
    # vector cost more than the index search they guard (issue 14).
    if not values:
        raise ValueError("embedding must not be empty")
    if len(values) > MAX_EMBEDDING_DIM:
        raise ValueError(f"embedding has {len(values)} values; at most {MAX_EMBEDDING_DIM}")
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError("embedding contains NaN or infinity")
    if not array.any():
        raise ValueError("embedding is all zeros; it has no direction to compare")
    # Vectors are compared as float32: a value beyond its range becomes infinity, and a vector of
    # only tiny values becomes all zeros; either would turn every similarity into NaN.
    if np.abs(array).max() > _FLOAT32_MAX:
        raise ValueError(f"embedding values must be within ±{_FLOAT32_MAX:.4g} (float32)")
    norm = float(np.linalg.norm(array.astype(np.float32)))
    if not math.isfinite(norm) or norm < _MIN_FLOAT32_NORM:
        raise ValueError("embedding has no usable float32 direction (zero or overflowing norm)")
    return values


def _finite_json(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and has_non_finite(value):
        raise ValueError("metadata must not contain NaN or Infinity (they are not JSON numbers)")
    return value


Embedding = list[float]
#: Encoder space names are short words (`voxceleb`, `cnceleb`).
MAX_SPACE_LENGTH = 32


class StrictModel(BaseModel):
    # Unknown fields are rejected: a misspelt `top_n` silently ignored is worse than a 422.
    model_config = ConfigDict(extra="forbid")


# --- errors ----------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code, e.g. `audio_too_short`.")
    message: str = Field(description="Human-readable explanation.")
    details: dict[str, Any] | None = Field(None, description="Extra context, when useful.")


class ErrorResponse(BaseModel):
    success: bool = Field(False, description="Always false for errors.")
    error: ErrorDetail


# --- health ----------------------------------------------------------------------------------
class ModelHealth(BaseModel):
    enabled: bool = Field(
        True, description="False when switched off by configuration (source `off`)."
    )
    loaded: bool
    source: str = Field(description="Hub repo id or local directory the model is loaded from.")
    identity: str | None = Field(None, description="Source plus a hash of the weights.")
    error: str | None = Field(None, description="Why the model is not loaded.")
    error_kind: str | None = Field(
        None,
        description="What kind of problem: `dependency` (torch/torchaudio/speechbrain do not "
        "import), `files_missing`, `hub_unreachable`, `bad_checkpoint`, `device`, `config`, "
        "`other`. `voicesearch doctor` explains each.",
    )
    load_seconds: float | None = None
    backend: str | None = Field(
        None, description="What runs it: `torch`, `onnx` or `onnx-int8` (plus the device)."
    )


class SpaceHealth(BaseModel):
    available: bool = Field(description="The encoder of this space is loaded.")
    indexed_speakers: int | None = Field(None, description="Speakers searchable in this space.")
    threshold: float = Field(description="Cosine threshold in force for `is_match`.")


class InferenceHealth(BaseModel):
    running: int = Field(description="Inference steps running now.")
    waiting: int = Field(description="Inference steps waiting for a slot.")
    admitted: int = Field(description="Requests admitted for inference (running or queued).")
    concurrency: int = Field(description="Inference steps that may run at once.")
    max_queue: int = Field(
        description="Requests that may wait beyond the running ones; more get 503 `overloaded`."
    )


class HealthResponse(BaseModel):
    """With API keys configured, a caller without a valid key gets `status` and `auth` only."""

    status: str = Field(
        description="`healthy` when every model that is switched on is loaded, else `degraded`."
    )
    models_loaded: bool | None = Field(
        None,
        description="True when every model that is switched on is loaded (switched-off models "
        "do not count); `loaded_models` lists what is loaded either way.",
    )
    loaded_models: list[str] | None = Field(
        None, description='Roles whose model is loaded, e.g. `["voxceleb"]`.'
    )
    models: dict[str, ModelHealth] | None = Field(
        None, description="Per role: `langid`, `voxceleb`, `cnceleb`."
    )
    spaces: dict[str, SpaceHealth] | None = None
    inference: InferenceHealth | None = Field(None, description="The inference queue.")
    version: str | None = None
    auth: str = Field(
        "disabled", description="`enabled` when API keys are required, `disabled` (open API)."
    )


# --- language --------------------------------------------------------------------------------
class LanguageCandidateOut(BaseModel):
    language: str = Field(description="ISO 639 code, e.g. `zh`.")
    name: str = Field(description="Language name, e.g. `Chinese`.")
    confidence: float = Field(description="Model posterior probability, 0..1.")


class DetectLanguageResponse(BaseModel):
    success: bool = True
    language: str = Field(description="Most likely spoken language (ISO 639 code).")
    name: str = Field(description="Its name.")
    confidence: float = Field(description="Posterior probability of that language, 0..1.")
    candidates: list[LanguageCandidateOut] = Field(description="Best candidates, best first.")
    space: str = Field(description="Encoder space this language routes to.")
    duration_s: float = Field(description="Decoded audio duration in seconds.")


# --- embeddings ------------------------------------------------------------------------------
class ExtractEmbeddingResponse(BaseModel):
    success: bool = True
    embedding: list[float] = Field(description="L2-normalised speaker embedding.")
    embedding_size: int
    language: str = Field(description="Language used for routing (detected or given).")
    language_confidence: float = Field(
        description="Language-ID probability; 1.0 when the caller gave the language."
    )
    confidence: float = Field(
        description="Deprecated: the same value as `language_confidence` (kept for old clients)."
    )
    language_source: str = Field(description="`detected` or `caller`.")
    space: str = Field(description="Encoder space the embedding belongs to.")
    model: str = Field(description="Identity of the model that produced the embedding.")
    duration_s: float = Field(description="Decoded audio duration in seconds.")


class CompareVoicesRequest(StrictModel):
    embedding1: Embedding = Field(description="First embedding (any scale; normalised here).")
    embedding2: Embedding = Field(description="Second embedding, same length as the first.")
    space: str | None = Field(
        None,
        description="Encoder space whose threshold decides `is_match` (default voxceleb).",
        max_length=MAX_SPACE_LENGTH,
    )

    _check = field_validator("embedding1", "embedding2")(_finite_vector)


class CompareVoicesResponse(BaseModel):
    success: bool = True
    similarity: float = Field(description="Cosine similarity, -1..1.")
    is_match: bool = Field(description="similarity ≥ the space's threshold.")
    threshold: float
    space: str
    match_probability: float | None = Field(
        None,
        description="Calibrated probability that both are the same speaker (logistic "
        "calibration fitted by `voicesearch calibrate`, prior 0.5); null when uncalibrated.",
    )
    threshold_source: str | None = Field(
        None, description="`calibrated` (see GET /calibration) or `default` (settings)."
    )


# --- find-match ------------------------------------------------------------------------------
class StoredEmbedding(StrictModel):
    id: str = Field(description="Caller's id for this candidate.", max_length=256)
    embedding: Embedding
    metadata: dict[str, Any] | None = None

    _check = field_validator("embedding")(_finite_vector)
    _check_metadata = field_validator("metadata")(_finite_json)


class FindMatchRequest(StrictModel):
    """Either the stateless mode (`stored_embeddings` given) or a search of the enrolled index."""

    user_embedding: Embedding = Field(description="Probe embedding.")
    stored_embeddings: list[StoredEmbedding] | None = Field(
        None,
        description="Stateless mode: candidates to rank. Omit it to search enrolled speakers.",
        max_length=100_000,
    )
    top_n: int = Field(5, ge=1, description="How many matches to return.")
    space: str | None = Field(
        None, description="Encoder space of `user_embedding`.", max_length=MAX_SPACE_LENGTH
    )
    language: str | None = Field(
        None,
        description="Alternative to `space`: the language whose space to search.",
        max_length=MAX_LANGUAGE_LENGTH,
    )

    _check = field_validator("user_embedding")(_finite_vector)


class MatchOut(BaseModel):
    id: str = Field(description="Candidate id (the speaker's external id for index searches).")
    similarity: float = Field(description="Raw cosine similarity, -1..1.")
    is_match: bool = Field(
        description="This candidate's decision score ≥ threshold, and so did every candidate "
        "ranked before it (the verdict is about the first; speech was detected)."
    )
    name: str | None = None
    metadata: dict[str, Any] | None = None
    score: float | None = Field(
        None,
        description="The score `is_match` compares with `threshold`: the cosine, or the AS-norm "
        "normalised score when score normalisation is on for the space.",
    )
    match_probability: float | None = Field(
        None, description="Calibrated same-speaker probability (prior 0.5); null if uncalibrated."
    )
    pair_type: str | None = Field(
        None,
        description="Narrowband probes (source <= 8 kHz) only: the pair type that decided: `B` "
        "(the speaker's telephone-band profile), `C` (a speaker enrolled from <= 8 kHz audio) "
        "or `A` (no telephone-band profile: enrolled before they existed). Each has its own "
        "impostor tail; `score` is on the space's own scale.",
    )
    profile: str | None = Field(
        None, description="Which profile was scored: `telephone_band` or `normal`."
    )


class QualityOut(BaseModel):
    codes: list[str] = Field(
        description="`ok`, or any of `no_speech_detected` (audible, but no speech found: counts "
        "0 s), `too_short`, `clipped`, `too_quiet`, `low_snr` (warnings); `no_speech` (nothing "
        "audible) rejects the file (422)."
    )
    speech_s: float = Field(description="Net speech found by voice activity detection (s).")
    duration_s: float
    snr_db: float | None = Field(None, description="Estimated signal-to-noise ratio (dB).")
    level_dbfs: float | None = Field(None, description="Mean level of the speech (dBFS).")
    clipped_fraction: float = Field(description="Fraction of samples at full scale.")
    vad: str = Field(description="Voice activity detector used.")
    peak_dbfs: float | None = Field(
        None, description="The clip's level: 99.9th percentile of |x| (dBFS)."
    )


class FindMatchResponse(BaseModel):
    success: bool = True
    best_match: MatchOut | None = Field(
        description="The first candidate: the closest by cosine (a narrowband probe against "
        "telephone-band profiles: by its mapped score), or null if none."
    )
    top_matches: list[MatchOut]
    threshold: float
    space: str | None = None
    language: str | None = Field(None, description="Language of the probe (detected or given).")
    language_confidence: float | None = Field(
        None,
        description="Language-ID probability of `language` (1.0 when the caller gave it). Not "
        "about the match: see `decision`, `best_match.score` and `match_probability`.",
    )
    confidence: float | None = Field(
        None,
        description="Deprecated: the same value as `language_confidence` (kept for old "
        "clients; it never was the match confidence).",
    )
    language_source: str | None = None
    searched: int | None = Field(None, description="How many candidates were searched.")
    decision: str | None = Field(
        None,
        description="`match` (best_match passes the threshold), `no_match` (open set: nobody "
        "enrolled passes it; the closest candidates are still listed) or `undecided` (no speech "
        "was detected in the probe; any detected speech gets a decision).",
    )
    match: MatchOut | None = Field(
        None, description="The matching speaker when `decision` is `match`, else null."
    )
    reason: str | None = Field(
        None,
        description="Why there is no match: `below_threshold`, `no_speech_detected` (undecided: "
        "no speech was detected in the probe), `empty_gallery`.",
    )
    score_type: str | None = Field(None, description="`cosine` or `asnorm` (what `score` is).")
    probe_band: str | None = Field(
        None,
        description="`narrowband` when the probe (source <= 8 kHz) was scored against "
        "telephone-band profiles, else `wideband`.",
    )
    band_note: str | None = Field(
        None, description="Why a narrowband probe was not scored against telephone-band profiles."
    )
    threshold_source: str | None = Field(
        None,
        description="Where the rule comes from: `shipped` (the package's default), `calibrated` "
        "(`voicesearch calibrate`; see GET /calibration) or `setting` (an operator's fixed "
        "threshold).",
    )
    threshold_rule: str | None = Field(
        None,
        description="`max_of_n_tail` (the threshold follows the gallery size so that at most "
        "`fpir_target` of unenrolled voices are matched) or `fixed`.",
    )
    fpir_target: float | None = Field(
        None, description="FPIR the threshold stands for (`max_of_n_tail` only)."
    )
    gallery_size: int | None = Field(
        None, description="Searchable speakers the threshold was set for (N in t(N))."
    )
    threshold_note: str | None = Field(
        None, description="e.g. `shipped default (uncalibrated for this checkpoint)`."
    )
    threshold_quality: str | None = Field(
        None,
        description="The probe's quality class when it was held to that class's stricter tail "
        "(shipped, or fitted by `voicesearch calibrate` under a calibration; impostor scores of "
        "longer probes run higher): `long_clean` (>= 2 s of "
        "speech at >= 20 dB estimated SNR), `long_noisy` (>= 2 s, < 20 dB) or `medium_clean` "
        "(1-2 s, >= 15 dB); `GET /calibration` lists them (`strict_tails`). A wideband probe's "
        "`threshold` is then the higher of the two t(N); a phone probe's telephone-band pairs "
        "are mapped so that their own strict bar lands on `threshold`. Null otherwise.",
    )
    quality: QualityOut | None = Field(None, description="Speech quality of the probe audio.")


# --- speakers --------------------------------------------------------------------------------
class UtteranceOut(BaseModel):
    id: int
    language: str | None
    confidence: float | None
    duration_s: float
    spaces: list[str] = Field(description="Encoder spaces the utterance was embedded in.")
    created: bool = Field(description="False when this exact clip was already enrolled.")
    created_at: datetime
    speech_s: float | None = Field(None, description="Net speech in the clip (s).")
    quality: QualityOut | None = Field(None, description="Quality feedback for this upload.")


class EnrollmentAmountOut(BaseModel):
    """How much a speaker is enrolled with (``service.search.enrollment_amount``)."""

    recommended_speech_seconds: float | None = Field(
        None, description="Net speech recommended per speaker (s); below it a warning."
    )
    enrollment_tier: str | None = Field(
        None,
        description="`weak` (< 3 s net speech), `fair` (below the recommended amount) or `good`.",
    )
    reason: str | None = Field(
        None,
        description="Why the speaker is not searchable: `insufficient_enrollment_speech`; "
        "null when searchable.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="`enrollment_below_recommended` when the net speech is below the "
        "recommended amount.",
    )


class SpeakerOut(EnrollmentAmountOut):
    id: str = Field(description="The speaker's external id (used in every URL).")
    name: str | None
    metadata: dict[str, Any]
    utterance_count: int
    spaces: list[str] = Field(description="Spaces in which the speaker is searchable.")
    created_at: datetime
    updated_at: datetime
    speech_seconds: float | None = Field(
        None, description="Net speech over all the speaker's utterances (s)."
    )
    required_speech_seconds: float | None = Field(
        None, description="Net speech needed before the speaker is searchable (s)."
    )
    searchable: bool | None = Field(
        None,
        description="False while the enrollment is incomplete (not enough speech yet): the "
        "speaker is stored but not found by find-match until more audio is added.",
    )


class EnrollmentResponse(EnrollmentAmountOut):
    success: bool = True
    speaker: SpeakerOut
    utterances: list[UtteranceOut]
    speech_seconds: float | None = Field(None, description="Net speech enrolled so far (s).")
    required_speech_seconds: float | None = Field(
        None, description="Net speech needed before the speaker is searchable (s)."
    )
    missing_speech_seconds: float | None = Field(
        None, description="How much more net speech to add before the speaker is searchable."
    )
    searchable: bool | None = Field(None, description="Whether find-match can return them.")


class SpeakerResponse(BaseModel):
    success: bool = True
    speaker: SpeakerOut


class SpeakerListResponse(BaseModel):
    success: bool = True
    speakers: list[SpeakerOut]
    total: int
    offset: int
    limit: int


class SpeakerPatch(StrictModel):
    name: str | None = Field(None, max_length=256)
    metadata: dict[str, Any] | None = None


class DeletedResponse(BaseModel):
    success: bool = True
    id: str
    deleted: bool = True


# --- calibration -----------------------------------------------------------------------------
class StrictTailFitOut(BaseModel):
    u: float = Field(description="The strict tail's 95th percentile of impostor scores.")
    beta: float = Field(description="Its mean excess above u.")
    mass: float = Field(description="Share of impostor scores above u.")
    threshold: float = Field(
        description="The bar this class's probes' pairs of this type meet at the gallery size "
        "now, on this type's own scale: for `A` the answer's `threshold` (the higher of the "
        "pooled and this tail's t(N)); for `B` the bar answers map onto their `threshold`."
    )


class StrictTailOut(BaseModel):
    name: str = Field(
        description="The class (`long_clean`, `long_noisy`, `medium_clean`): the value answers "
        "carry in `threshold_quality`."
    )
    min_speech_s: float = Field(description="Net speech a probe needs (s).")
    max_speech_s: float | None = Field(None, description="Net speech it must stay under (s).")
    min_snr_db: float | None = Field(None, description="Estimated SNR a probe needs (dB).")
    max_snr_db: float | None = Field(None, description="Estimated SNR it must stay under (dB).")
    tails: dict[str, StrictTailFitOut] = Field(
        description="Per pair type: `A`, a wideband probe against the normal profiles; `B`, a "
        "phone probe against telephone-band profiles (only where this space has them)."
    )


class CalibrationSpaceOut(BaseModel):
    space: str
    model_identity: str | None = Field(None, description="Identity of the loaded encoder.")
    threshold: float = Field(description="Threshold in force for `is_match` now.")
    score_type: str = Field(description="`cosine` or `asnorm`: the score it applies to.")
    source: str = Field(
        description="`shipped` (package default), `calibrated` (`voicesearch calibrate`) or "
        "`setting` (an operator's fixed threshold)."
    )
    setting: str | None = Field(None, description="For `setting`: which one.")
    rule: str = Field(description="`max_of_n_tail` (t(N) follows the gallery) or `fixed`.")
    fpir_target: float | None = Field(None, description="FPIR* the threshold stands for.")
    gallery_size: int | None = Field(None, description="Searchable speakers now (N).")
    note: str | None = Field(
        None, description="e.g. `shipped default (uncalibrated for this checkpoint)`."
    )
    tail: dict[str, float] | None = Field(
        None,
        description="Impostor tail behind t(N): u (its quantile), beta (mean excess), mass "
        "(share above u); t(N) = u + beta·ln(mass / (1 − (1 − fpir_target)^(1/N))).",
    )
    thresholds_by_gallery_size: dict[str, float] | None = Field(
        None, description="t(N) for a few N (model, not measurement)."
    )
    strict_tails: list[StrictTailOut] = Field(
        default_factory=list,
        description="VOICESEARCH_QUALITY_TAILS: the probe quality classes held to a stricter "
        "tail than the pooled one (the shipped classes under the shipped rule, those `voicesearch "
        "calibrate` fitted under a calibration), and the threshold each gets now.",
    )
    cohort: str | None = Field(
        None, description="AS-norm cohort in use, or why the shipped one is not used."
    )
    narrowband_profiles: str | None = Field(
        None,
        description="Telephone-band profiles for probes of <= 8 kHz source: `on: …` or why not "
        "(VOICESEARCH_NARROWBAND_PROFILES, shipped cohort).",
    )
    fpir: float | None = Field(
        None, description="FPIR measured by the calibration (unenrolled probes matched)."
    )
    fnir: float | None = Field(
        None,
        description="FNIR measured by the calibration (enrolled probes not returned as the "
        "right match), at its gallery size.",
    )
    calibrated_gallery_size: int | None = Field(
        None, description="Gallery size of the calibration's own measurement."
    )
    calibrated_at: datetime | None = None
    target_far: float | None = Field(None, description="Old pair-FAR calibrations only.")
    far: float | None = Field(None, description="Pair FAR measured at the threshold.")
    frr: float | None = Field(None, description="Pair FRR measured at the threshold.")
    eer: float | None = None
    n_genuine: int | None = None
    n_impostor: int | None = None
    n_speakers: int | None = None
    data: str | None = Field(None, description="What it was measured on (manifest).")
    match_probability: bool = Field(
        False, description="Whether a logistic calibration gives `match_probability`."
    )
    asnorm: bool = Field(False, description="AS-norm score normalisation is on for the space.")


class CalibrationResponse(BaseModel):
    success: bool = True
    spaces: dict[str, CalibrationSpaceOut]


# --- audit -----------------------------------------------------------------------------------
class AuditEntryOut(BaseModel):
    id: int
    created_at: datetime
    action: str = Field(
        description="e.g. `speaker.enroll`, `speaker.delete`, `index.rebuild`, "
        "`calibration.store`, `calibration.withdraw`."
    )
    speaker_id: str | None = Field(description="External id of the speaker concerned.")
    actor: str = Field(description="Name of the API key (never the key); `anonymous` if open.")
    role: str | None = Field(description="Role of that key; null when access control is off.")
    details: dict[str, Any]


class AuditListResponse(BaseModel):
    success: bool = True
    entries: list[AuditEntryOut] = Field(description="Newest first.")
    total: int
    offset: int
    limit: int
