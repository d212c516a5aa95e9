"""The energy-based speech detector: which 25 ms frames of a clip look like speech.

Used as the ``vad="energy"`` detector of ``service.pipeline.detection`` (for synthetic test
signals, which a real VAD rightly hears as non-speech). It is no longer a gate on uploads: its
absolute floor refused quiet but clear speech (issue 12); only inaudible clips are refused now.

On non-overlapping 25 ms frames (the window speech front-ends use), a frame is speech when its
RMS is

* above an absolute floor of -50 dBFS (RMS re full scale): quiet but real speech recorded close
  to a phone sits around -20…-40 dBFS, a quiet room's noise floor well below -50, and digital
  silence or dither (-90 dBFS and lower) never passes; and
* within 40 dB of the loudest frame: in a recording with a loud talker, the low-level background
  between words is not counted as speech, while a uniformly quiet recording is judged only by
  the absolute floor.

It cannot tell speech from steady noise or music: that is what the VAD is for.
"""

from __future__ import annotations

import numpy as np

from service.pipeline.audio import TARGET_SAMPLE_RATE

FRAME_S = 0.025
_ABS_FLOOR_DBFS = -50.0
_REL_RANGE_DB = 40.0


def frame_length(sample_rate: int = TARGET_SAMPLE_RATE) -> int:
    """Samples per 25 ms frame."""
    return max(round(FRAME_S * sample_rate), 1)


def speech_frames(samples: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """One bool per whole 25 ms frame of ``samples`` (mono float in [-1, 1]): is it speech?"""
    frame_len = frame_length(sample_rate)
    n_frames = samples.shape[0] // frame_len
    if n_frames == 0:
        return np.zeros(0, dtype=bool)
    frames = np.asarray(samples[: n_frames * frame_len], dtype=np.float32).reshape(
        n_frames, frame_len
    )
    power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frame_len
    level_db = 10.0 * np.log10(np.maximum(power, 1e-20))  # 1e-20: -200 dB for digital zero
    threshold = max(_ABS_FLOOR_DBFS, float(level_db.max()) - _REL_RANGE_DB)
    return level_db > threshold


def speech_seconds(samples: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> float:
    """Seconds of ``samples`` (mono float in [-1, 1]) whose 25 ms frames look like speech."""
    mask = speech_frames(samples, sample_rate)
    return int(np.count_nonzero(mask)) * frame_length(sample_rate) / sample_rate
