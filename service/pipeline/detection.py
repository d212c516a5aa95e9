"""Speech detection that never refuses audible speech (issue 12; the "REC" detector).

What it answers, per decoded 16 kHz clip: is anything audible at all, and where is the speech?

* **Audible?** The clip's level is the 99.9th percentile of |x| (a peak measure that one click
  cannot fake). Below ``audible_floor_dbfs`` (-75 dBFS: digital silence, dither) there is
  nothing to identify, and the upload is refused. This is the *only* refusal: every rule that
  also looked at loudness or at the amount of speech refused real speech (quiet phone calls,
  one-word clips) in the measurements behind issue 12.
* **Where is the speech?** Silero VAD, on a copy of the clip brought to a fixed level first
  (gain ``min(0.5 / p99.9, +60 dB)``): Silero's output depends on the input level, and a quiet
  recording (peak -30 dBFS and below) lost most of its speech without it. Narrowband uploads
  (source rate <= 8 kHz) are taken back to 8 kHz and Silero runs at 8 kHz: on a telephone clip
  upsampled to 16 kHz it found nothing, at 8 kHz the whole utterance. Threshold 0.5 (Silero's
  default), then 0.3 if 0.5 finds nothing. Finding nothing is *not* a refusal: the clip is
  accepted with ``speech_s = 0`` and its report says ``no_speech_detected`` (noise, a tone,
  music, or a word Silero misses).

The gain is only for the VAD; the clip that is embedded is never changed. Measured in
``/work/scratch/issue12/RESULTS.md`` (Q1): 0 refusals in 3,256 degraded real-speech probes
(the previous detector refused 1,600), silence and dither refused.

``vad="energy"``: the frame-energy detector of ``service.pipeline.speech`` instead of Silero
(for synthetic test voices, which a real VAD rightly hears as non-speech); same audibility rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

from service.pipeline.audio import TARGET_SAMPLE_RATE
from service.pipeline.speech import frame_length, speech_frames
from service.pipeline.vad import SileroVad, timestamps_from_probabilities

#: Level = this percentile of |x|: robust to a few clicks, still a peak measure.
LEVEL_PERCENTILE = 99.9
#: What the VAD's copy of the clip is brought to (|x| at the percentile = 0.5, i.e. -6 dBFS)…
VAD_TARGET_LEVEL = 0.5
#: …with at most this much gain (dither must not be blown up into "speech").
VAD_MAX_GAIN_DB = 60.0
#: Silero thresholds, tried in order until one finds speech.
VAD_THRESHOLDS = (0.5, 0.3)
#: Uploads recorded at or below this rate are analysed by Silero at 8 kHz.
NARROWBAND_MAX_RATE = 8_000
_NARROWBAND_VAD_RATE = 8_000
_SILENT_DBFS = -200.0  # the level reported for digital zero


@dataclass(frozen=True)
class SpeechDetection:
    audible: bool  # False: nothing above the audibility floor (the upload is refused)
    level_dbfs: float  # 99.9th percentile of |x|, dBFS (-200 for digital zero)
    segments: list[tuple[int, int]]  # speech, (start, end) in 16 kHz samples, end exclusive
    vad_rate: int | None  # rate Silero ran at (None: energy detector or not run)
    threshold: float | None  # Silero threshold that found the speech (None: none found)

    @property
    def speech_s(self) -> float:
        return sum(end - start for start, end in self.segments) / TARGET_SAMPLE_RATE


def level_dbfs(samples: np.ndarray) -> float:
    """The clip's level: the 99.9th percentile of |x| in dBFS (-200 for digital zero)."""
    if samples.size == 0:
        return _SILENT_DBFS
    level = float(np.percentile(np.abs(samples), LEVEL_PERCENTILE))
    return 20.0 * float(np.log10(level)) if level > 0 else _SILENT_DBFS


def vad_gain(level_db: float) -> float:
    """Gain that brings a clip at ``level_db`` to the VAD's working level, capped."""
    if level_db <= _SILENT_DBFS:
        return 1.0
    return float(min(VAD_TARGET_LEVEL / 10 ** (level_db / 20), 10 ** (VAD_MAX_GAIN_DB / 20)))


def energy_segments(samples: np.ndarray) -> list[tuple[int, int]]:
    """Runs of speech-like 25 ms frames (``service.pipeline.speech``) as sample ranges."""
    frame = frame_length(TARGET_SAMPLE_RATE)
    out: list[tuple[int, int]] = []
    start = None
    mask = speech_frames(samples)
    for i, value in enumerate(mask):
        if value and start is None:
            start = i
        elif not value and start is not None:
            out.append((start * frame, i * frame))
            start = None
    if start is not None:
        out.append((start * frame, len(mask) * frame))
    return out


class SpeechDetector:
    """Audibility + speech segments for decoded clips. One per process; thread-safe (the
    Silero sessions keep no state between calls)."""

    def __init__(self, *, vad: str = "silero", audible_floor_dbfs: float = -75.0) -> None:
        if vad not in ("silero", "energy"):
            raise ValueError(f"unknown vad {vad!r}")
        self.vad = vad
        self.audible_floor_dbfs = audible_floor_dbfs
        self._model: SileroVad | None = SileroVad() if vad == "silero" else None

    def detect(
        self, samples: np.ndarray, source_sample_rate: int = TARGET_SAMPLE_RATE
    ) -> SpeechDetection:
        """``samples``: the decoded clip (16 kHz mono float32); ``source_sample_rate``: the
        upload's own rate (``DecodedAudio.source_sample_rate``)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        level = level_dbfs(samples)
        if level < self.audible_floor_dbfs:
            return SpeechDetection(False, level, [], None, None)
        if self._model is None:
            return SpeechDetection(True, level, energy_segments(samples), None, None)
        vad_input = samples * np.float32(vad_gain(level))
        rate = TARGET_SAMPLE_RATE
        if source_sample_rate <= NARROWBAND_MAX_RATE:
            rate = _NARROWBAND_VAD_RATE
            vad_input = signal.resample_poly(vad_input, 1, TARGET_SAMPLE_RATE // rate)
        vad_input = np.ascontiguousarray(vad_input, dtype=np.float32)
        scale = TARGET_SAMPLE_RATE // rate
        probabilities = self._model.speech_probabilities(vad_input, rate)
        for threshold in VAD_THRESHOLDS:
            found = timestamps_from_probabilities(
                probabilities, audio_length=vad_input.size, sample_rate=rate, threshold=threshold
            )
            if found:
                segments = [(start * scale, min(end * scale, samples.size)) for start, end in found]
                return SpeechDetection(True, level, segments, rate, threshold)
        return SpeechDetection(True, level, [], rate, None)
