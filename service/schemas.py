"""Request and response bodies of the HTTP API.

Field descriptions here are what `/docs` shows, so they are written for API users. The shapes of
the original Flask service (`success`, `embedding`, `similarity`, `is_match`, `best_match`,
`top_matches`, …) are kept because clients already parse them; new fields are additive.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# An embedding longer than this cannot come from any model we serve; refusing early keeps a
# hostile body from costing memory and CPU.
MAX_EMBEDDING_DIM = 4096


def _finite_vector(values: list[float]) -> list[float]:
    if not values:
        raise ValueError("embedding must not be empty")
    if len(values) > MAX_EMBEDDING_DIM:
        raise ValueError(f"embedding has {len(values)} values; at most {MAX_EMBEDDING_DIM}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("embedding contains NaN or infinity")
    if not any(v != 0.0 for v in values):
        raise ValueError("embedding is all zeros; it has no direction to compare")
    return values


Embedding = list[float]


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
    loaded: bool
    source: str = Field(description="Hub repo id or local directory the model is loaded from.")
    identity: str | None = Field(None, description="Source plus a hash of the weights.")
    error: str | None = Field(None, description="Why the model is not loaded.")
    load_seconds: float | None = None


class SpaceHealth(BaseModel):
    available: bool = Field(description="The encoder of this space is loaded.")
    indexed_speakers: int | None = Field(None, description="Speakers searchable in this space.")
    threshold: float = Field(description="Cosine threshold in force for `is_match`.")


class HealthResponse(BaseModel):
    status: str = Field(description="`healthy` when every model is loaded, else `degraded`.")
    models_loaded: bool = Field(description="True when every configured model is loaded.")
    models: dict[str, ModelHealth] = Field(description="Per role: `langid`, `voxceleb`, `cnceleb`.")
    spaces: dict[str, SpaceHealth] = Field(default_factory=dict)
    version: str


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
    confidence: float = Field(
        description="Language-ID probability; 1.0 when the caller gave the language."
    )
    language_source: str = Field(description="`detected` or `caller`.")
    space: str = Field(description="Encoder space the embedding belongs to.")
    model: str = Field(description="Identity of the model that produced the embedding.")
    duration_s: float


class CompareVoicesRequest(StrictModel):
    embedding1: Embedding = Field(description="First embedding (any scale; normalised here).")
    embedding2: Embedding = Field(description="Second embedding, same length as the first.")
    space: str | None = Field(
        None, description="Encoder space whose threshold decides `is_match` (default voxceleb)."
    )

    _check = field_validator("embedding1", "embedding2")(_finite_vector)


class CompareVoicesResponse(BaseModel):
    success: bool = True
    similarity: float = Field(description="Cosine similarity, -1..1.")
    is_match: bool = Field(description="similarity ≥ the space's threshold.")
    threshold: float
    space: str


# --- find-match ------------------------------------------------------------------------------
class StoredEmbedding(StrictModel):
    id: str = Field(description="Caller's id for this candidate.", max_length=256)
    embedding: Embedding
    metadata: dict[str, Any] | None = None

    _check = field_validator("embedding")(_finite_vector)


class FindMatchRequest(StrictModel):
    """Either the stateless mode (`stored_embeddings` given) or a search of the enrolled index."""

    user_embedding: Embedding = Field(description="Probe embedding.")
    stored_embeddings: list[StoredEmbedding] | None = Field(
        None,
        description="Stateless mode: candidates to rank. Omit it to search enrolled speakers.",
        max_length=100_000,
    )
    top_n: int = Field(5, ge=1, description="How many matches to return.")
    space: str | None = Field(None, description="Encoder space of `user_embedding`.")
    language: str | None = Field(
        None, description="Alternative to `space`: the language whose space to search."
    )

    _check = field_validator("user_embedding")(_finite_vector)


class MatchOut(BaseModel):
    id: str = Field(description="Candidate id (the speaker's external id for index searches).")
    similarity: float
    is_match: bool
    name: str | None = None
    metadata: dict[str, Any] | None = None


class FindMatchResponse(BaseModel):
    success: bool = True
    best_match: MatchOut | None = Field(description="Highest-scoring candidate, or null if none.")
    top_matches: list[MatchOut]
    threshold: float
    space: str | None = None
    language: str | None = None
    confidence: float | None = None
    language_source: str | None = None
    searched: int | None = Field(None, description="How many candidates were searched.")


# --- speakers --------------------------------------------------------------------------------
class UtteranceOut(BaseModel):
    id: int
    language: str | None
    confidence: float | None
    duration_s: float
    spaces: list[str] = Field(description="Encoder spaces the utterance was embedded in.")
    created: bool = Field(description="False when this exact clip was already enrolled.")
    created_at: datetime


class SpeakerOut(BaseModel):
    id: str = Field(description="The speaker's external id (used in every URL).")
    name: str | None
    metadata: dict[str, Any]
    utterance_count: int
    spaces: list[str] = Field(description="Spaces in which the speaker is searchable.")
    created_at: datetime
    updated_at: datetime


class EnrollmentResponse(BaseModel):
    success: bool = True
    speaker: SpeakerOut
    utterances: list[UtteranceOut]


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
