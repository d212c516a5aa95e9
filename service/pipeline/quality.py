"""Speech quality of one utterance: audibility, net speech, clipping, level, SNR.

:class:`QualityAssessor` is built once at start-up (it holds the speech detector and its VAD
model) and is thread-safe. It answers, per decoded clip, a :class:`QualityReport` with
commercial-enrollment-style feedback codes:

========================  =====================================================================
code                      meaning / effect
========================  =====================================================================
``ok``                    nothing to report
``no_speech``             nothing audible (level below ``audible_floor_dbfs``: digital silence,
                          dither) — **rejects** the file (422)
``no_speech_detected``    audible, but the VAD found no speech (noise, a tone, music, or speech
                          it missed) — warning; the clip counts 0 s of net speech
``too_short``             speech found, but less than ``min_probe_speech_s`` — warning
``clipped``               more than ``clipped_fraction_warn`` of samples at full scale — warning
``too_quiet``             active speech level below ``too_quiet_dbfs`` — warning
``low_snr``               estimated SNR below ``low_snr_db`` — warning
========================  =====================================================================

Only ``no_speech`` rejects: quiet, narrowband, clipped or noisy audio still carries the speaker
(ECAPA is trained with noise augmentation), and every rule that refused more also refused real
speech (issue 12). The warnings tell the client to re-record if it can.

Nothing is trimmed: the whole decoded clip is embedded, exactly what SpeechBrain's
``EncoderClassifier`` gets when used directly. Cutting the non-speech out made scores *worse*
on degraded audio in issue 12's measurements (EER up in 5 of 6 conditions, scores moved by a
median 0.02); the VAD now only measures net speech (this report, the enrollment amount, the
warnings).

SNR (the "hyb10" estimator of issue 12, Q6): speech power = mean power of the 25 ms frames inside
the VAD's speech segments; noise power = 10th percentile of *all* 25 ms frame powers (the
quietest stretch of the clip, speech or not); ``SNR = 10 log10((P_speech - P_noise) /
P_noise)``, clamped to [-20, 60] dB, 60 when the noise floor is digital zero, null when no
speech was found. Measured bias <= 0.6 dB, sd <= 0.5 dB on white noise at 0-10 dB; the former
estimator (median of the non-speech frames) reported clean clips at -7 dB whenever the VAD
missed a word.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from service.core.settings import QualitySettings
from service.pipeline.audio import TARGET_SAMPLE_RATE
from service.pipeline.detection import SpeechDetection, SpeechDetector
from service.pipeline.speech import frame_length

CODE_OK = "ok"
CODE_NO_SPEECH = "no_speech"
CODE_NO_SPEECH_DETECTED = "no_speech_detected"
CODE_TOO_SHORT = "too_short"
CODE_CLIPPED = "clipped"
CODE_TOO_QUIET = "too_quiet"
CODE_LOW_SNR = "low_snr"

#: Codes that refuse the file; every other code only warns.
REJECTING_CODES = frozenset({CODE_NO_SPEECH})

_FRAME = frame_length(TARGET_SAMPLE_RATE)  # 400 samples: 25 ms at 16 kHz
_CLIP_LEVEL = 0.999  # |x| at or above this counts as full scale (decoders map int max to <1)
_NOISE_PERCENTILE = 10.0
_SNR_RANGE_DB = (-20.0, 60.0)


@dataclass(frozen=True)
class QualityReport:
    duration_s: float
    speech_s: float
    snr_db: float | None
    level_dbfs: float | None  # mean power of speech frames
    clipped_fraction: float
    codes: list[str] = field(default_factory=list)
    vad: str = "silero"
    peak_dbfs: float | None = None  # the clip's level (99.9th percentile of |x|)

    @property
    def rejected(self) -> bool:
        return any(code in REJECTING_CODES for code in self.codes)

    def to_dict(self) -> dict:
        return {
            "codes": list(self.codes),
            "speech_s": round(self.speech_s, 3),
            "duration_s": round(self.duration_s, 3),
            "snr_db": None if self.snr_db is None else round(self.snr_db, 1),
            "level_dbfs": None if self.level_dbfs is None else round(self.level_dbfs, 1),
            "clipped_fraction": round(self.clipped_fraction, 5),
            "vad": self.vad,
            "peak_dbfs": None if self.peak_dbfs is None else round(self.peak_dbfs, 1),
        }


@dataclass(frozen=True)
class Assessment:
    report: QualityReport
    detection: SpeechDetection  # where the speech is (the clip itself is embedded whole)


def _db(power: float) -> float:
    return 10.0 * float(np.log10(max(power, 1e-20)))


def frame_powers(samples: np.ndarray) -> np.ndarray:
    """Mean power of each whole 25 ms frame (16 kHz samples)."""
    n_frames = samples.shape[0] // _FRAME
    frames = samples[: n_frames * _FRAME].reshape(n_frames, _FRAME).astype(np.float64)
    return np.einsum("ij,ij->i", frames, frames) / _FRAME


def speech_frame_mask(segments: list[tuple[int, int]], n_frames: int) -> np.ndarray:
    """True for every 25 ms frame that overlaps a speech segment."""
    mask = np.zeros(n_frames, dtype=bool)
    for start, end in segments:
        mask[start // _FRAME : -(-end // _FRAME)] = True
    return mask


def estimate_snr_db(powers: np.ndarray, speech: np.ndarray) -> float | None:
    """hyb10 (module docstring): ``powers`` per frame, ``speech`` the frames inside speech."""
    if not speech.any():
        return None
    p_speech = float(powers[speech].mean())
    p_noise = float(np.percentile(powers, _NOISE_PERCENTILE))
    if p_noise <= 1e-12:
        return _SNR_RANGE_DB[1]
    return float(np.clip(_db(max(p_speech - p_noise, 1e-20) / p_noise), *_SNR_RANGE_DB))


def snr_db_of(
    samples: np.ndarray, segments: list[tuple[int, int]], powers: np.ndarray | None = None
) -> float | None:
    """hyb10 SNR of ``samples`` (16 kHz) with ``segments`` (sample ranges) as its speech: what
    :meth:`QualityAssessor.assess` reports, for audio whose speech was found elsewhere (a live
    window, one voice of a recording). ``powers``: :func:`frame_powers` of ``samples``, when
    already computed (a recording's voices share them)."""
    if powers is None:
        powers = frame_powers(samples)
    return estimate_snr_db(powers, speech_frame_mask(segments, powers.size))


class QualityAssessor:
    """Speech detection + quality codes. One per process; :meth:`assess` may be called from
    many threads."""

    def __init__(
        self,
        *,
        vad: str = "silero",
        audible_floor_dbfs: float = -75.0,
        min_probe_speech_s: float = 1.5,
        clipped_fraction_warn: float = 0.001,
        low_snr_db: float = 10.0,
        too_quiet_dbfs: float = -40.0,
    ) -> None:
        self.detector = SpeechDetector(vad=vad, audible_floor_dbfs=audible_floor_dbfs)
        self.vad = vad
        self.min_probe_speech_s = min_probe_speech_s
        self.clipped_fraction_warn = clipped_fraction_warn
        self.low_snr_db = low_snr_db
        self.too_quiet_dbfs = too_quiet_dbfs

    @classmethod
    def from_settings(cls, settings: QualitySettings) -> QualityAssessor:
        # The section's fields are exactly this constructor's keyword arguments.
        return cls(**asdict(settings))

    def assess(
        self, samples: np.ndarray, source_sample_rate: int = TARGET_SAMPLE_RATE
    ) -> Assessment:
        """``samples``: the decoded clip (16 kHz mono); ``source_sample_rate``: the upload's
        own rate (narrowband uploads are analysed at 8 kHz)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        detection = self.detector.detect(samples, source_sample_rate)
        clipped = float(np.mean(np.abs(samples) >= _CLIP_LEVEL)) if samples.size else 0.0
        powers = frame_powers(samples)
        speech = speech_frame_mask(detection.segments, powers.size)
        level_dbfs = _db(float(powers[speech].mean())) if speech.any() else None
        snr_db = estimate_snr_db(powers, speech)

        codes: list[str] = []
        if not detection.audible:
            codes.append(CODE_NO_SPEECH)
        else:
            if detection.speech_s <= 0:
                codes.append(CODE_NO_SPEECH_DETECTED)
            elif detection.speech_s < self.min_probe_speech_s:
                codes.append(CODE_TOO_SHORT)
            if clipped > self.clipped_fraction_warn:
                codes.append(CODE_CLIPPED)
            if level_dbfs is not None and level_dbfs < self.too_quiet_dbfs:
                codes.append(CODE_TOO_QUIET)
            if snr_db is not None and snr_db < self.low_snr_db:
                codes.append(CODE_LOW_SNR)
        report = QualityReport(
            duration_s=samples.shape[0] / TARGET_SAMPLE_RATE,
            speech_s=float(detection.speech_s),
            snr_db=snr_db,
            level_dbfs=level_dbfs,
            clipped_fraction=clipped,
            codes=codes or [CODE_OK],
            vad=self.vad,
            peak_dbfs=detection.level_dbfs,
        )
        return Assessment(report, detection)
