"""Model input: 16 kHz mono float32 samples, checked; and a warm-up signal.

Shared by every model the service runs (``service.pipeline.encoders``,
``service.pipeline.language``), whichever backend runs it.
"""

from __future__ import annotations

import numpy as np

from service.core import errors

SAMPLE_RATE = 16_000
#: Shortest input the ECAPA front end can take (its dilated convolutions need a few frames;
#: below ~40 ms they fail). 0.1 s leaves a margin; the audio layer usually asks for more.
MIN_SAMPLES = SAMPLE_RATE // 10


def checked_samples(samples: np.ndarray) -> np.ndarray:
    """float32 16 kHz mono 1-D samples, checked, as a new float32 array (never aliased)."""
    array = np.asarray(samples)
    if array.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {array.shape}")
    if array.size == 0:
        raise errors.EmptyAudio("the audio contains no samples")
    if array.size < MIN_SAMPLES:
        raise errors.AudioTooShort(
            f"the audio is {array.size / SAMPLE_RATE:.3f} s long; the models need at least "
            f"{MIN_SAMPLES / SAMPLE_RATE:g} s",
            details={"duration_s": array.size / SAMPLE_RATE},
        )
    array = np.array(array, dtype=np.float32, copy=True)
    if not np.isfinite(array).all():
        raise errors.InvalidInput("the audio contains NaN or infinite samples")
    return array


def warmup_signal() -> np.ndarray:
    """One second of quiet deterministic noise: enough for any ECAPA front end."""
    rng = np.random.default_rng(0)
    return (0.01 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
