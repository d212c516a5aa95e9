"""Who is speaking now: one rolling window of live audio → one event.

Each window (the last ``window_s`` of the stream, every ``hop_s`` of stream time) goes through
the service's own steps, nothing live-specific:

1. speech detection (``service.pipeline.detection``: the clip detector, Silero at a fixed gain);
   less than ``min_speech_s`` of speech in the window is ``silence``;
2. the window's speech (its detected segments, joined) embedded by the encoder of the routed
   space: the caller's ``language``, else the language detected on the first window with speech
   (``ClipPipeline.route``, find-match's routing), then kept for the session;
3. ``Matcher.search_index``: find-match's index search and open-set decision (t(N) rule,
   AS-norm, calibration). Verdict ``match`` → state ``speaker`` with the enrolled id; any other
   → ``unknown``.

Step 1–2 are model work and run in the inference queue's slots; step 3 in a worker thread
(``service.recordings.live_session`` drives them). :class:`LiveTally` accumulates the final
summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core import errors
from service.core.settings import LiveSettings
from service.decisions.bandwidth import is_narrowband
from service.pipeline.audio import TARGET_SAMPLE_RATE, DecodedAudio
from service.pipeline.clip import RoutedLanguage
from service.pipeline.quality import snr_db_of
from service.recordings.live_audio import FORMAT_S16, FORMAT_WEBM, FORMATS, MAX_RATE, MIN_RATE
from service.search.matching import VERDICT_MATCH, MatchResult
from service.search.voicesearch import VoiceSearch

STATE_SPEAKER = "speaker"
STATE_UNKNOWN = "unknown"
STATE_SILENCE = "silence"


@dataclass(frozen=True)
class LiveOptions:
    """What the client's first message (``{"type": "start", …}``) chose."""

    format: str = FORMAT_S16
    sample_rate: int = TARGET_SAMPLE_RATE
    language: str | None = None
    top_n: int = 3


def parse_start(message: Any, max_top_n: int) -> LiveOptions:
    """The ``start`` message's options, or 422 ``validation_error`` naming the bad field."""
    if not isinstance(message, dict) or message.get("type") != "start":
        raise errors.InvalidInput(
            'the first message must be JSON {"type": "start", "format": …}',
            details={"expected": "start"},
        )
    unknown = sorted(set(message) - {"type", "format", "sample_rate", "language", "top_n"})
    if unknown:
        raise errors.InvalidInput("unknown fields in start", details={"fields": unknown})
    fmt = message.get("format", FORMAT_S16)
    if fmt not in FORMATS:
        raise errors.InvalidInput(
            f"format must be one of {', '.join(FORMATS)}", details={"format": str(fmt)[:40]}
        )
    rate = message.get("sample_rate", TARGET_SAMPLE_RATE)
    if fmt == FORMAT_WEBM:
        rate = TARGET_SAMPLE_RATE  # the container says; the field is ignored
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise errors.InvalidInput(
            f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE}",
            details={"sample_rate": str(rate)[:40]},
        )
    language = message.get("language")
    if language is not None and (not isinstance(language, str) or not 0 < len(language) <= 16):
        raise errors.InvalidInput("language must be a short string", details={"field": "language"})
    top_n = message.get("top_n", 3)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= max_top_n:
        raise errors.InvalidInput(
            f"top_n must be an integer from 1 to {max_top_n}", details={"top_n": str(top_n)[:40]}
        )
    return LiveOptions(fmt, rate, language or None, top_n)


@dataclass(frozen=True)
class Embedded:
    """One window after speech detection and, when it held enough speech, embedding."""

    speech_s: float
    vector: np.ndarray | None  # None: silence (too little speech)
    #: Estimated SNR of the window (``service.pipeline.quality``), as find-match measures a
    #: clip's: with net speech it picks the probe quality class that may raise the bar.
    snr_db: float | None = None


class LiveAnalyser:
    """The blocking steps for one session (it remembers the session's routed space)."""

    def __init__(self, voicesearch: VoiceSearch, settings: LiveSettings, options: LiveOptions):
        self.voicesearch = voicesearch
        self.settings = settings
        self.options = options
        self.routed: RoutedLanguage | None = None
        # The band the audio was captured at, as find-match sees an upload's source rate: an
        # 8 kHz stream gets Silero at 8 kHz and the telephone-band profiles (issue 12).
        # MediaRecorder's Opus is wideband.
        webm = options.format == FORMAT_WEBM
        self.source_rate = TARGET_SAMPLE_RATE if webm else options.sample_rate

    def route_early(self) -> None:
        """Pick the space before any audio when no detection is needed: a language given, or
        language ID switched off (then one space, or 422 ``language_required``)."""
        pipeline = self.voicesearch.pipeline
        if self.options.language or pipeline.models.language_identifier is None:
            empty = DecodedAudio(np.zeros(0, np.float32), TARGET_SAMPLE_RATE, 1, "live")
            self.routed = pipeline.route(empty, self.options.language)
            pipeline.models.encoder(self.routed.space)  # loaded, or 503 now

    def embed(self, samples: np.ndarray) -> Embedded:
        """Speech detection and embedding of one window (model work: an inference slot)."""
        pipeline = self.voicesearch.pipeline
        detection = pipeline.quality.detector.detect(samples, self.source_rate)
        speech_s = detection.speech_s if detection.audible else 0.0
        if speech_s < max(self.settings.min_speech_s, 1e-9):
            return Embedded(speech_s, None)
        speech = np.concatenate([samples[a:b] for a, b in detection.segments])
        if self.routed is None:
            audio = DecodedAudio(speech, TARGET_SAMPLE_RATE, 1, "live")
            self.routed = pipeline.route(audio, self.options.language)
        encoder = pipeline.models.encoder(self.routed.space)
        return Embedded(speech_s, encoder.embed(speech), snr_db_of(samples, detection.segments))

    def decide(self, embedded: Embedded) -> MatchResult:
        """find-match's index search and decision for one embedded window (SQLite, FAISS)."""
        assert embedded.vector is not None and self.routed is not None
        return self.voicesearch.matcher.search_index(
            self.routed.space,
            embedded.vector,
            self.options.top_n,
            embedded.speech_s,
            narrowband=is_narrowband(self.source_rate),
            snr_db=embedded.snr_db,
        )


def window_event(
    start: int,
    end: int,
    speech_s: float,
    result: MatchResult | None,
    took_s: float,
    snr_db: float | None = None,
) -> dict[str, Any]:
    """The ``speaking`` event for the window ``[start, end)`` (stream samples)."""
    event: dict[str, Any] = {
        "type": "speaking",
        "start": round(start / TARGET_SAMPLE_RATE, 3),
        "end": round(end / TARGET_SAMPLE_RATE, 3),
        "speech_s": round(speech_s, 3),
        "snr_db": None if snr_db is None else round(snr_db, 1),
        "took_ms": round(took_s * 1000.0, 1),
    }
    if result is None:
        return {**event, "state": STATE_SILENCE, "speaker": None, "decision": None}
    best = result.best_match
    state = STATE_SPEAKER if result.verdict == VERDICT_MATCH else STATE_UNKNOWN
    return {
        **event,
        "state": state,
        "speaker": best.id if state == STATE_SPEAKER and best is not None else None,
        "name": best.name if state == STATE_SPEAKER and best is not None else None,
        "decision": result.verdict,
        "reason": result.reason,
        "score": None if best is None else round(float(best.score or 0.0), 4),
        "threshold": round(result.decision.threshold, 4),
        "threshold_quality": result.decision.quality,
        "score_type": result.decision.score_type,
        "space": result.space,
        "candidates": [
            {
                "speaker": m.id,
                "similarity": round(float(m.similarity), 4),
                "score": round(float(m.score or 0.0), 4),
            }
            for m in result.matches
        ],
    }


@dataclass
class SpeakerTally:
    windows: int = 0
    first: float = 0.0  # stream time of the first window naming the speaker
    best_score: float = -1.0


@dataclass
class LiveTally:
    """What a session saw, for the ``summary`` event sent on close."""

    windows: int = 0
    dropped: int = 0  # windows skipped because analysis was still busy with an earlier one
    busy: int = 0  # windows refused by the inference queue
    states: dict[str, int] = field(default_factory=dict)
    speakers: dict[str, SpeakerTally] = field(default_factory=dict)

    def add(self, event: dict[str, Any]) -> None:
        self.windows += 1
        self.states[event["state"]] = self.states.get(event["state"], 0) + 1
        if event["state"] == STATE_SPEAKER:
            tally = self.speakers.setdefault(event["speaker"], SpeakerTally(first=event["end"]))
            tally.windows += 1
            tally.best_score = max(tally.best_score, event["score"])

    def summary(self, samples: int, reason: str, routed: RoutedLanguage | None) -> dict[str, Any]:
        return {
            "type": "summary",
            "reason": reason,
            "duration_s": round(samples / TARGET_SAMPLE_RATE, 3),
            "windows": self.windows,
            "dropped_windows": self.dropped,
            "busy_windows": self.busy,
            "states": self.states,
            "space": None if routed is None else routed.space,
            "language": None if routed is None else routed.language,
            "speakers": [
                {
                    "speaker": name,
                    "windows": t.windows,
                    "first_named_at": t.first,
                    "best_score": t.best_score,
                }
                for name, t in sorted(self.speakers.items(), key=lambda kv: kv[1].first)
            ],
        }
