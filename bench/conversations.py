"""Synthetic conversations with exact reference timelines, from the dev-speech speakers.

Eight speakers: ``spk1``, ``spk2`` (six sentences each) and the six LibriSpeech/VCTK speakers of
``rtvc_samples`` (one 5 s clip each). Each speaker's audio is split once into *enrollment* audio
and *conversation* audio that never overlap (spk1/spk2: sentences 1-2 enroll, 3-6 talk; rtvc:
the first 2.5 s enroll, the rest talks), so no conversation contains audio the gallery was
enrolled from. ``8230`` and ``p260`` are never enrolled: they are the strangers an open-set
identifier must call ``unknown``.

Each clip is trimmed of its leading and trailing silence (frames 35 dB below its loudest), so a
reference turn is speech from its first to its last sample. A turn of ``d`` seconds (uniform in
1-10 s) is cut from the speaker's conversation audio, joining pieces when one is shorter (the
data is small: long turns repeat a speaker's sentences). Conditions:

* ``pauses``: 0.3-1.5 s of quiet noise (-65 dBFS) between turns;
* ``no_pauses``: the next turn starts the instant the previous ends;
* ``overlap``: the next turn starts before the previous ends, by enough that about 10-20 % of
  the speech is overlapped (the achieved share is reported);
* ``degraded``: ``pauses``, then telephone band (8 kHz resampling), white noise at 10 dB SNR and
  a little clipping.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.common import DEV_SPEECH
from service.pipeline.audio import decode_audio

SR = 16_000
CONDITIONS = ("pauses", "no_pauses", "overlap", "degraded")
ENROLLED = ("spk1", "spk2", "1320", "3575", "6829", "p240")
STRANGERS = ("8230", "p260")


@dataclass(frozen=True)
class Turn:
    speaker: str
    start: float
    end: float


@dataclass
class Conversation:
    name: str
    condition: str
    samples: np.ndarray
    turns: list[Turn] = field(default_factory=list)

    @property
    def speakers(self) -> list[str]:
        return sorted({t.speaker for t in self.turns})

    def wav_bytes(self) -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, self.samples, SR, format="WAV", subtype="PCM_16")
        return buffer.getvalue()


def _load(path: Path) -> np.ndarray:
    return decode_audio(path.read_bytes(), max_duration_s=600, min_duration_s=0).samples


def trim_silence(samples: np.ndarray, range_db: float = 35.0) -> np.ndarray:
    """Without leading/trailing 10 ms frames more than ``range_db`` below the loudest."""
    n = samples.shape[0] // 160
    power = (samples[: n * 160].reshape(n, 160).astype(np.float64) ** 2).mean(axis=1)
    level = 10 * np.log10(np.maximum(power, 1e-12))
    loud = np.flatnonzero(level > level.max() - range_db)
    return samples[loud[0] * 160 : (loud[-1] + 1) * 160].copy()


@dataclass(frozen=True)
class SpeakerAudio:
    enroll: list[np.ndarray]  # clips to enroll from
    talk: list[np.ndarray]  # pieces conversations are cut from


def speaker_audio(root: Path = DEV_SPEECH) -> dict[str, SpeakerAudio]:
    out: dict[str, SpeakerAudio] = {}
    asr = root / "speechbrain_samples" / "ASR"
    for spk in ("spk1", "spk2"):
        clips = [trim_silence(_load(asr / f"{spk}_snt{i}.wav")) for i in range(1, 7)]
        out[spk] = SpeakerAudio(enroll=clips[:2], talk=clips[2:])
    for path in sorted((root / "rtvc_samples").glob("*.mp3")):
        clip = trim_silence(_load(path))
        half = round(2.5 * SR)
        out[path.stem.split("_")[0]] = SpeakerAudio(enroll=[clip[:half]], talk=[clip[half:]])
    return out


def _turn_audio(rng: np.random.Generator, pieces: list[np.ndarray], seconds: float) -> np.ndarray:
    want = round(seconds * SR)
    order = rng.permutation(len(pieces)).tolist()
    joined: list[np.ndarray] = []
    have = 0
    while have < want:
        piece = pieces[order[len(joined) % len(order)]]
        if not joined:  # start anywhere in the first piece
            piece = piece[rng.integers(0, max(1, piece.shape[0] - SR)) :]
        joined.append(piece)
        have += piece.shape[0]
    return np.concatenate(joined)[:want]


def _degrade(rng: np.random.Generator, samples: np.ndarray) -> np.ndarray:
    from scipy.signal import resample_poly

    phone = resample_poly(resample_poly(samples, 1, 2), 2, 1)[: samples.shape[0]]
    speech_power = float(np.mean(phone[np.abs(phone) > 1e-3] ** 2))
    noise = rng.standard_normal(phone.shape[0]) * np.sqrt(speech_power / 10 ** (10 / 10))
    return np.clip((phone + noise) * 1.6, -1.0, 1.0)


def build(
    rng: np.random.Generator,
    audio: dict[str, SpeakerAudio],
    *,
    name: str,
    condition: str,
    n_speakers: int,
    minutes: float,
    with_stranger: bool,
) -> Conversation:
    """One conversation of about ``minutes`` with ``n_speakers`` (one of them a stranger when
    ``with_stranger``), turns 1-10 s, no speaker twice in a row."""
    enrolled = [s for s in ENROLLED if s in audio]
    strangers = [s for s in STRANGERS if s in audio]
    cast = list(rng.choice(enrolled, n_speakers - int(with_stranger), replace=False))
    if with_stranger:
        cast.append(str(rng.choice(strangers)))
    total = round(minutes * 60 * SR)
    pieces: list[tuple[int, np.ndarray, str]] = []
    cursor = round(0.5 * SR)
    previous = None
    # Everyone speaks early (so a short conversation still has its whole cast), then at random.
    queue = list(rng.permutation(cast))
    while cursor < total:
        speaker = queue.pop(0) if queue else str(rng.choice([s for s in cast if s != previous]))
        if speaker == previous:
            continue
        seconds = float(rng.uniform(1.0, 10.0))
        turn = _turn_audio(rng, audio[speaker].talk, seconds)
        start = cursor
        if condition == "overlap" and pieces and rng.random() < 0.8:
            prev_len = pieces[-1][1].shape[0]
            back = round(float(rng.uniform(0.15, 0.35)) * min(prev_len, turn.shape[0]))
            start = max(pieces[-1][0] + 1, cursor - back)
        pieces.append((start, turn, speaker))
        cursor = start + turn.shape[0]
        if condition in ("pauses", "degraded"):
            cursor += round(float(rng.uniform(0.3, 1.5)) * SR)
        previous = speaker
    length = max(p[0] + p[1].shape[0] for p in pieces) + round(0.5 * SR)
    samples = np.zeros(length, dtype=np.float64)
    turns = []
    for start, turn, speaker in pieces:
        samples[start : start + turn.shape[0]] += turn
        turns.append(Turn(speaker, start / SR, (start + turn.shape[0]) / SR))
    samples += rng.standard_normal(length) * 10 ** (-65 / 20)
    if condition == "degraded":
        samples = _degrade(rng, samples)
    peak = float(np.max(np.abs(samples)))
    if peak > 0.99:
        samples *= 0.99 / peak
    return Conversation(name, condition, samples.astype(np.float32), turns)


def overlap_share(conversation: Conversation) -> float:
    """Fraction of speech time with two or more speakers."""
    n = round(conversation.samples.shape[0] / SR * 100) + 1
    count = np.zeros(n, dtype=np.int32)
    for t in conversation.turns:
        count[round(t.start * 100) : round(t.end * 100)] += 1
    speech = np.count_nonzero(count)
    return float(np.count_nonzero(count > 1) / speech) if speech else 0.0
