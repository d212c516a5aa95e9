"""Speech quality of one utterance: voice activity, net speech, clipping, level, SNR.

:class:`QualityAssessor` is built once at start-up (it holds the VAD model) and is thread-safe.
It answers, per decoded clip, a :class:`QualityReport` with commercial-enrollment-style feedback
codes and the *speech-only* samples that should be embedded:

========================  =====================================================================
code                      meaning / effect
========================  =====================================================================
``ok``                    nothing to report
``no_speech``             less than ``min_speech_s`` of net speech — **rejects** the file (422)
``too_short``             speech present but below ``min_probe_speech_s`` — warning; a probe
                          with it gets ``is_match: false``, ``reason: insufficient_speech``
``clipped``               more than ``clipped_fraction_warn`` of samples at full scale — warning
``too_quiet``             active speech level below ``too_quiet_dbfs`` — warning
``low_snr``               estimated SNR below ``low_snr_db`` — warning
========================  =====================================================================

Only ``no_speech`` rejects: clipped, quiet or noisy audio still carries the speaker, and ECAPA is
trained with noise augmentation; the warnings tell the client to re-record if it can.

VAD: Silero VAD (MIT; its model ships inside the ``silero-vad`` wheel, so nothing is
downloaded), run on ONNX Runtime by ``service.pipeline.vad``. ``vad="energy"`` uses the
frame-energy detector of ``service.pipeline.speech`` instead (no trimming); it exists for
synthetic test signals, which a real VAD rightly refuses as non-speech.

SNR is estimated from the VAD's own split: non-speech frames give the noise floor,
speech frames carry speech + noise, ``SNR = 10 log10((P_speech - P_noise) / P_noise)``, clamped
to [-20, 60] dB. The noise floor is the *median* power of the non-speech 25 ms frames (robust to
speech the VAD missed); when the clip has too little non-speech (< 0.2 s), the 10th percentile
of all frame powers stands in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from service.core.settings import QualitySettings
from service.pipeline.audio import TARGET_SAMPLE_RATE
from service.pipeline.speech import frame_length, speech_frames, speech_seconds
from service.pipeline.vad import SileroVad

CODE_OK = "ok"
CODE_NO_SPEECH = "no_speech"
CODE_TOO_SHORT = "too_short"
CODE_CLIPPED = "clipped"
CODE_TOO_QUIET = "too_quiet"
CODE_LOW_SNR = "low_snr"

#: Codes that refuse the file; every other code only warns.
REJECTING_CODES = frozenset({CODE_NO_SPEECH})

_FRAME = frame_length(TARGET_SAMPLE_RATE)  # 400 samples: 25 ms at 16 kHz
_CLIP_LEVEL = 0.999  # |x| at or above this counts as full scale (decoders map int max to <1)
_MIN_NOISE_S = 0.2
_PAD_S = 0.1  # kept around each speech segment when trimming (onsets, offsets)
_MERGE_GAP_S = 0.3  # segments closer than this are merged before trimming


@dataclass(frozen=True)
class QualityReport:
    duration_s: float
    speech_s: float
    snr_db: float | None
    level_dbfs: float | None  # mean power of speech frames
    clipped_fraction: float
    codes: list[str] = field(default_factory=list)
    vad: str = "silero"

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
        }


@dataclass(frozen=True)
class Assessment:
    report: QualityReport
    samples: np.ndarray  # what to embed: speech segments (silero) or the whole clip (energy)


def _db(power: float) -> float:
    return 10.0 * float(np.log10(max(power, 1e-20)))


class QualityAssessor:
    """VAD + quality codes. One per process; :meth:`assess` may be called from many threads."""

    def __init__(
        self,
        *,
        vad: str = "silero",
        min_speech_s: float = 0.5,
        min_probe_speech_s: float = 1.5,
        clipped_fraction_warn: float = 0.001,
        low_snr_db: float = 15.0,
        too_quiet_dbfs: float = -40.0,
        trim: bool = True,
    ) -> None:
        if vad not in ("silero", "energy"):
            raise ValueError(f"unknown vad {vad!r}")
        self.vad = vad
        self.min_speech_s = min_speech_s
        self.min_probe_speech_s = min_probe_speech_s
        self.clipped_fraction_warn = clipped_fraction_warn
        self.low_snr_db = low_snr_db
        self.too_quiet_dbfs = too_quiet_dbfs
        self.trim = trim
        self._model: SileroVad | None = None
        if vad == "silero":
            self._model = SileroVad()

    @classmethod
    def from_settings(cls, settings: QualitySettings) -> QualityAssessor:
        # The section's fields are exactly this constructor's keyword arguments.
        return cls(**asdict(settings))

    # ------------------------------------------------------------------ VAD
    def speech_mask(self, samples: np.ndarray) -> np.ndarray:
        """Boolean per 25 ms frame: is it speech?"""
        n_frames = samples.shape[0] // _FRAME
        mask = np.zeros(n_frames, dtype=bool)
        if n_frames == 0:
            return mask
        if self._model is None:
            return speech_frames(samples)
        for start, end in self.segments(samples):
            mask[start // _FRAME : -(-end // _FRAME)] = True
        return mask

    def segments(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """Speech segments as (start, end) sample offsets (Silero), or one whole-clip segment
        per energy run."""
        if self._model is None:
            return _runs(speech_frames(samples), _FRAME)
        # Digital silence: nothing to ask the model (and saves its time).
        if not np.any(np.abs(samples) > 1e-4):
            return []
        return self._model.speech_timestamps(samples, TARGET_SAMPLE_RATE)

    # ------------------------------------------------------------------ assessment
    def assess(self, samples: np.ndarray) -> Assessment:
        samples = np.asarray(samples, dtype=np.float32)
        duration = samples.shape[0] / TARGET_SAMPLE_RATE
        n_frames = samples.shape[0] // _FRAME
        clipped = float(np.mean(np.abs(samples) >= _CLIP_LEVEL)) if samples.size else 0.0

        if self._model is None:
            speech_s = speech_seconds(samples, TARGET_SAMPLE_RATE)
            segments: list[tuple[int, int]] = []
            mask = speech_frames(samples)
        else:
            segments = self.segments(samples)
            speech_s = sum(end - start for start, end in segments) / TARGET_SAMPLE_RATE
            mask = np.zeros(n_frames, dtype=bool)
            for start, end in segments:
                mask[start // _FRAME : -(-end // _FRAME)] = True

        level_dbfs = snr_db = None
        if n_frames and mask.any():
            frames = samples[: n_frames * _FRAME].reshape(n_frames, _FRAME).astype(np.float64)
            power = np.einsum("ij,ij->i", frames, frames) / _FRAME
            p_speech = float(power[mask].mean())
            level_dbfs = _db(p_speech)
            if (~mask).sum() * _FRAME / TARGET_SAMPLE_RATE >= _MIN_NOISE_S:
                # Median, not mean: speech the VAD missed (breaths, weak onsets) must not
                # count as noise.
                p_noise = float(np.median(power[~mask]))
            else:
                p_noise = float(np.percentile(power, 10))
            if p_noise <= 1e-12:
                snr_db = 60.0 if p_speech > 1e-10 else None  # digital silence around speech
            else:
                snr_db = _db(max(p_speech - p_noise, 1e-20) / p_noise)
                snr_db = float(np.clip(snr_db, -20.0, 60.0))

        codes: list[str] = []
        if speech_s < self.min_speech_s:
            codes.append(CODE_NO_SPEECH)
        else:
            if speech_s < self.min_probe_speech_s:
                codes.append(CODE_TOO_SHORT)
            if clipped > self.clipped_fraction_warn:
                codes.append(CODE_CLIPPED)
            if level_dbfs is not None and level_dbfs < self.too_quiet_dbfs:
                codes.append(CODE_TOO_QUIET)
            if snr_db is not None and snr_db < self.low_snr_db:
                codes.append(CODE_LOW_SNR)
        if not codes:
            codes.append(CODE_OK)
        report = QualityReport(
            duration_s=duration,
            speech_s=float(speech_s),
            snr_db=snr_db,
            level_dbfs=level_dbfs,
            clipped_fraction=clipped,
            codes=codes,
            vad=self.vad,
        )
        return Assessment(report, self._trimmed(samples, segments))

    def _trimmed(self, samples: np.ndarray, segments: list[tuple[int, int]]) -> np.ndarray:
        if not self.trim or not segments:
            return samples
        pad = round(_PAD_S * TARGET_SAMPLE_RATE)
        gap = round(_MERGE_GAP_S * TARGET_SAMPLE_RATE)
        merged: list[list[int]] = []
        for start, end in segments:
            start, end = max(0, start - pad), min(samples.shape[0], end + pad)
            if merged and start - merged[-1][1] <= gap:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        if len(merged) == 1 and merged[0] == [0, samples.shape[0]]:
            return samples
        return np.ascontiguousarray(np.concatenate([samples[s:e] for s, e in merged]))


def _runs(mask: np.ndarray, frame: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = None
    for i, value in enumerate(mask):
        if value and start is None:
            start = i
        elif not value and start is not None:
            out.append((start * frame, i * frame))
            start = None
    if start is not None:
        out.append((start * frame, len(mask) * frame))
    return out
