"""Part of a recording as an upload of its own: ``start``/``end`` on enrollment uploads.

A client enrolls someone from a stretch of a longer recording (a meeting where identify-speakers
found them, say) by sending the recording with ``start`` and ``end`` in seconds. The cut is made
on the decoded audio and handed on as a 16 kHz float WAV, so everything after it — speech
checks, VAD, quality codes, embeddings, duplicate detection (the cut's samples are what is
hashed) — is exactly what a client sending that stretch alone would get.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from service.core import errors
from service.core.settings import ClipSettings
from service.pipeline.audio import TARGET_SAMPLE_RATE, decode_audio


@dataclass(frozen=True)
class Excerpt:
    start_s: float | None = None  # from the start of the recording when None
    end_s: float | None = None  # to its end when None (or when past it)

    @property
    def whole(self) -> bool:
        return self.start_s is None and self.end_s is None

    def check(self) -> None:
        """Refuse an empty or reversed span before any decoding."""
        for field, value in (("start", self.start_s), ("end", self.end_s)):
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise errors.InvalidInput(f"{field} must be a finite number of seconds ≥ 0")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise errors.InvalidInput(
                "end must be after start",
                details={"start": self.start_s, "end": self.end_s},
            )


def cut(data: bytes, excerpt: Excerpt, settings: ClipSettings) -> bytes:
    """The ``excerpt`` of the upload ``data`` as WAV bytes (blocking: decodes the upload)."""
    excerpt.check()
    if excerpt.whole:
        return data
    audio = decode_audio(data, max_duration_s=settings.max_duration_s, min_duration_s=0.0)
    # Compared in seconds first: a huge float (1e308) must be "past the end", not an overflow.
    if (excerpt.start_s or 0.0) >= audio.duration_s:
        raise errors.InvalidInput(
            f"start ({excerpt.start_s:g} s) is past the end of the audio "
            f"({audio.duration_s:.2f} s)",
            details={"start": excerpt.start_s, "duration_s": round(audio.duration_s, 3)},
        )
    start = round((excerpt.start_s or 0.0) * TARGET_SAMPLE_RATE)
    end_s = audio.duration_s if excerpt.end_s is None else min(excerpt.end_s, audio.duration_s)
    end = min(audio.samples.shape[0], round(end_s * TARGET_SAMPLE_RATE))
    buffer = io.BytesIO()
    sf.write(buffer, audio.samples[start:end], TARGET_SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return buffer.getvalue()
