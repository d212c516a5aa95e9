"""What the stores take in and hand out: plain frozen dataclasses, never ORM rows."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np


class Unset(enum.Enum):
    """Sentinel type for "argument not given" where ``None`` is a meaningful value."""

    UNSET = enum.auto()


UNSET = Unset.UNSET


@dataclass(frozen=True)
class UtteranceInput:
    sha256: str  # of the clip as uploaded (decoded, before speech trimming): identifies re-uploads
    language: str | None
    language_confidence: float | None
    duration_s: float
    embeddings: dict[str, np.ndarray]  # space -> float32 (dim,) unit vector
    speech_s: float | None = None  # net speech (VAD); None: unknown, duration_s stands in
    #: The hash earlier releases stored for the same clip (of its speech-trimmed samples), so a
    #: clip they enrolled is still recognised when uploaded again. None when nothing was trimmed.
    legacy_sha256: str | None = None
    #: The upload's own sample rate (Hz): ≤ 8000 marks a telephone-band clip. None: unknown.
    source_sample_rate: int | None = None


@dataclass(frozen=True)
class UtteranceRecord:
    id: int
    sha256: str
    language: str | None
    language_confidence: float | None
    duration_s: float
    created_at: datetime
    spaces: list[str]  # spaces holding an embedding of this clip made by the loaded model
    created: bool  # False when the clip was already stored for this speaker (idempotent)
    speech_s: float | None = None


@dataclass(frozen=True)
class SpeakerRecord:
    id: int
    external_id: str
    name: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    utterance_count: int
    spaces: list[str]  # spaces where the speaker has a profile made by the loaded model
    speech_s: float = 0.0  # net speech over all utterances (duration_s where unknown)


@dataclass(frozen=True)
class ChangeCursor:
    """Where the change log stands: the newest ``seq``, every space's rebuild generation and
    every space's compaction horizon (newest deleted seq; changes up to it are gone)."""

    seq: int
    generations: dict[str, int]
    horizons: dict[str, int] = field(default_factory=dict)

    def generation(self, space: str) -> int:
        return self.generations.get(space, 0)

    def horizon(self, space: str) -> int:
        return self.horizons.get(space, 0)


@dataclass(frozen=True)
class SpeakerBrief:
    """What a search answer shows of a speaker (no counts, no profiles)."""

    id: int
    external_id: str
    name: str | None
    metadata: dict[str, Any]
