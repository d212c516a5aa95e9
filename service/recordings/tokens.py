"""Enroll tokens: enroll an ``unknown_<n>`` voice of an identify-speakers answer by name,
without sending the recording again.

What a token keeps is the voice's *audio* (its most typical timeline segments, at most
``enroll_token_max_s`` of speech, as 16-bit FLAC; at 8 kHz when the recording was ≤ 8 kHz, so
the enrollment knows the voice came over a phone line, as it would from the upload itself),
not its window embeddings: an enrollment embeds each utterance as a whole clip in **every**
loaded space, measures its net speech and quality, and recognises a clip already stored by its
samples' hash. Window embeddings of the
routed space alone could do none of that, so the token's audio is handed to the normal
enrollment (``VoiceSearch.enroll`` / ``add_utterances``) as one uploaded clip, and every check
and policy of an upload applies to it.

Tokens live in the database (``storage.enroll_tokens``), never in a process: any worker or
node redeems a token another one issued. Each is random (256 bits), stored only as its sha256,
valid ``enroll_token_ttl_s``, usable once (a refused enrollment gives it back), and bound to the
API key that asked for the identification (``principal``: the key's name; ``anonymous`` when
auth is off).
"""

from __future__ import annotations

import io
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import anyio
import numpy as np
import soundfile as sf
from scipy import signal

from service.core import errors
from service.core.settings import RecordingSettings
from service.decisions.bandwidth import is_narrowband
from service.pipeline.telephone import TELEPHONE_RATE
from service.recordings.segmentation import SAMPLE_RATE
from storage.enroll_tokens import Claim, EnrollTokenStore, NewToken, token_digest
from storage.models import utcnow


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime
    speech_s: float  # of the excerpt kept with it


@dataclass(frozen=True)
class RedeemedVoice:
    """What an enrollment gets from a token: one clip, and the language identify-speakers
    heard in it."""

    label: str
    audio: bytes
    language: str | None
    speech_s: float


class VoiceSpan(Protocol):
    """One stretch of a voice on the timeline (``identify.TimelineSegment``)."""

    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def speaker(self) -> str: ...
    @property
    def score(self) -> float: ...


def voice_excerpt(
    samples: np.ndarray, spans: Sequence[VoiceSpan], label: str, max_s: float
) -> np.ndarray:
    """The speech of ``label``: its most typical spans first (highest score: the least likely to
    hold a turn change or overlap), at most ``max_s`` seconds, joined in time order."""
    chosen: list[tuple[float, float]] = []
    total = 0.0
    for span in sorted((s for s in spans if s.speaker == label), key=lambda s: -s.score):
        if total >= max_s:
            break
        take = min(span.end - span.start, max_s - total)
        chosen.append((span.start, span.start + take))
        total += take
    pieces = [samples[round(a * SAMPLE_RATE) : round(b * SAMPLE_RATE)] for a, b in sorted(chosen)]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def flac(samples: np.ndarray, source_sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit FLAC: half the size of 16-bit PCM for speech, and lossless at that depth.

    ``samples`` are the decoded 16 kHz signal. A recording that came in at ≤ 8 kHz is written
    back at 8 kHz (its content is below 4 kHz, so nothing is lost): the enrollment then records
    the clip's source rate as ≤ 8 kHz and treats the voice as natively narrowband, exactly as
    if the recording itself had been uploaded (``service.search.narrowband``)."""
    rate = SAMPLE_RATE
    if is_narrowband(source_sample_rate):
        samples = signal.resample_poly(samples, TELEPHONE_RATE, SAMPLE_RATE).astype(np.float32)
        rate = TELEPHONE_RATE
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


class EnrollTokens:
    def __init__(
        self,
        store: EnrollTokenStore,
        settings: RecordingSettings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings
        #: Tests move it (expiry); aware UTC datetimes.
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.settings.enroll_token_ttl_s > 0

    def issue(
        self,
        samples: np.ndarray,
        spans: Sequence[VoiceSpan],
        labels: list[str],
        language: str | None,
        principal: str,
        source_sample_rate: int = SAMPLE_RATE,
    ) -> dict[str, IssuedToken]:
        """One token per voice in ``labels``, stored in one transaction (blocking).
        ``source_sample_rate``: the recording's own rate (its band is kept with the audio)."""
        if not self.enabled or not labels:
            return {}
        now = self.clock()
        expires_at = now + timedelta(seconds=self.settings.enroll_token_ttl_s)
        issued: dict[str, IssuedToken] = {}
        rows: list[NewToken] = []
        for label in labels:
            speech = voice_excerpt(samples, spans, label, self.settings.enroll_token_max_s)
            if speech.shape[0] == 0:
                continue
            token = secrets.token_urlsafe(32)
            speech_s = speech.shape[0] / SAMPLE_RATE
            rows.append(
                NewToken(
                    token_digest(token),
                    principal,
                    label,
                    language,
                    speech_s,
                    flac(speech, source_sample_rate),
                )
            )
            issued[label] = IssuedToken(token, expires_at, speech_s)
        self.store.issue(rows, now, expires_at)
        return issued

    def claim(self, token: str, principal: str) -> tuple[RedeemedVoice, datetime]:
        """Take the token for one enrollment, or the error that says why not (blocking)."""
        result = self.store.claim(token_digest(token), principal, self.clock())
        if result.outcome is Claim.MISSING:
            raise errors.EnrollTokenNotFound("unknown enroll token (never issued, or long expired)")
        if result.outcome is Claim.OTHER_PRINCIPAL:
            raise errors.EnrollTokenForbidden(
                "this enroll token was issued to another API key",
                details={"principal": principal},
            )
        when = None if result.expires_at is None else result.expires_at.isoformat()
        if result.outcome is Claim.USED:
            raise errors.EnrollTokenUsed(
                f"the enroll token of {result.label} was already used",
                details={"label": result.label},
            )
        if result.outcome is Claim.EXPIRED:
            raise errors.EnrollTokenExpired(
                f"the enroll token of {result.label} expired at {when}",
                details={"label": result.label, "expired_at": when},
            )
        assert result.audio is not None and result.claimed_at is not None and result.label
        voice = RedeemedVoice(result.label, result.audio, result.language, result.speech_s)
        return voice, result.claimed_at

    @asynccontextmanager
    async def redeem(self, token: str, principal: str) -> AsyncIterator[RedeemedVoice]:
        """The token's voice for the enrollment run inside the block: spent when the block
        succeeds, given back when it raises (a taken external id must not burn the token)."""
        voice, claimed_at = await anyio.to_thread.run_sync(self.claim, token, principal)
        digest = token_digest(token)
        try:
            yield voice
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.store.release, digest, claimed_at)
            raise
        await anyio.to_thread.run_sync(self.store.spend, digest)
