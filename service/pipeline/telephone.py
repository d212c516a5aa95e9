"""The telephone chain: what a call does to a 16 kHz recording, as one deterministic function.

300–3400 Hz band-pass (6th-order Butterworth), down to 8 kHz, then a µ-law (µ = 255, 8-bit)
companding round trip. It is the chain the issue-12 research degraded its probes with and built
its telephone-band profiles from (``bench/conditions/make_conditions.tel8k`` uses it too), so
the tails fitted there hold for profiles built here.

:func:`telephone_band` gives the 8 kHz signal; :func:`telephone_copy` brings it back to what
the service would have decoded had that call recording been uploaded (an 8 kHz PCM-16 WAV through
:func:`service.pipeline.audio.decode_audio`: the same resampler, the same rounding). Enrollment
embeds that copy as the speaker's telephone-band profile (``service.search.narrowband``).
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
from scipy import signal

from service.pipeline.audio import TARGET_SAMPLE_RATE, DecodedAudio, decode_audio

#: Sample rate of the telephone chain's output, and the highest source rate counted narrowband.
TELEPHONE_RATE = 8_000
#: Bumped whenever the chain changes: it is part of the telephone-band profiles' model identity,
#: so profiles made by another chain are recomputed rather than mixed (see storage.profiles).
CHAIN_VERSION = "tel8k-v1"
_MU = 255.0
_BANDPASS = signal.butter(6, [300, 3400], btype="bandpass", fs=TARGET_SAMPLE_RATE, output="sos")


def telephone_band(samples: np.ndarray) -> np.ndarray:
    """16 kHz float samples → the 8 kHz float32 signal a telephone line delivers."""
    y = signal.resample_poly(signal.sosfilt(_BANDPASS, samples), 1, 2)
    companded = np.sign(y) * np.log1p(_MU * np.abs(np.clip(y, -1, 1))) / np.log1p(_MU)
    quantised = np.round(companded * 127) / 127
    return (np.sign(quantised) * ((1 + _MU) ** np.abs(quantised) - 1) / _MU).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """PCM-16 WAV of float samples (clipped to [-1, 1])."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1, 1), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def telephone_copy(samples: np.ndarray) -> DecodedAudio:
    """The 16 kHz clip as it would arrive from a phone call: the chain's 8 kHz output stored as
    an 8 kHz WAV and decoded by the service's own decoder."""
    data = wav_bytes(telephone_band(samples), TELEPHONE_RATE)
    return decode_audio(data, max_duration_s=float("inf"), min_duration_s=0.0)
