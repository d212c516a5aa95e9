"""Synthetic audio for tests: a speech-like signal and real encoded files of every accepted format.

Everyone's tests build their uploads here, so the files are produced by the same FFmpeg (PyAV)
that decodes them in the service — no binary fixtures to keep in the repository.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import soundfile as sf

#: fmt → (container as FFmpeg's muxer names it, encoder, encoder options).
#: FFmpeg's own Vorbis encoder is the only one in the wheel (no libvorbis); it is "experimental"
#: and stereo-only, so ogg files are always written with two identical channels.
_FORMATS: dict[str, tuple[str, str, dict[str, str]]] = {
    "wav": ("wav", "pcm_s16le", {}),
    "flac": ("flac", "flac", {}),
    "ogg": ("ogg", "vorbis", {"strict": "experimental"}),
    "opus": ("ogg", "libopus", {}),
    "mp3": ("mp3", "libmp3lame", {}),
    "m4a": ("ipod", "aac", {}),
    "webm": ("webm", "libopus", {}),
}

#: Formats encode_audio can write.
FORMATS: tuple[str, ...] = tuple(_FORMATS)


def synth_voice(
    duration_s: float, sample_rate: int = 16_000, seed: int = 0, f0: float = 120.0
) -> np.ndarray:
    """A deterministic speech-like float32 signal in [-1, 1].

    A harmonic series on a slowly wobbling pitch (a crude glottal source), shaped by a 1/k
    spectral tilt and three fixed "formant" bumps, amplitude-modulated at a syllable rate
    (~4 Hz) with short near-silent gaps, plus a little noise. It is loud enough to pass the
    energy-based speech check and varied enough not to look like a pure tone to a codec.
    """
    rng = np.random.default_rng(seed)
    n = max(round(duration_s * sample_rate), 0)
    t = np.arange(n, dtype=np.float64) / sample_rate
    # Pitch wobble: ±8 % vibrato plus a slow drift, integrated into a phase.
    pitch = f0 * (1.0 + 0.08 * np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    formants = np.array([500.0, 1500.0, 2500.0]) * rng.uniform(0.9, 1.1, size=3)
    signal = np.zeros(n, dtype=np.float64)
    nyquist = sample_rate / 2
    for k in range(1, 40):
        freq = k * f0
        if freq >= nyquist * 0.9:
            break
        gain = (1.0 / k) * (1.0 + 2.0 * np.exp(-(((freq - formants[:, None]) / 200.0) ** 2)).sum())
        signal += gain * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    # Syllable-rate envelope with gaps, so there is structure in time (and silence to find).
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi)), 0.0, None) ** 0.5
    signal = signal * envelope + 0.01 * rng.standard_normal(n)
    peak = float(np.max(np.abs(signal))) if n else 0.0
    if peak > 0:
        signal *= 0.5 / peak
    return signal.astype(np.float32)


def wav_bytes(
    samples: np.ndarray, sample_rate: int, channels: int = 1, subtype: str = "PCM_16"
) -> bytes:
    """A WAV file via libsndfile; mono input is copied to ``channels`` identical channels.

    ``samples`` may also be 2-D (frames, channels), written as given.
    """
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 1 and channels > 1:
        data = np.repeat(data[:, None], channels, axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, data, sample_rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _layout(channels: int) -> av.AudioLayout:
    """FFmpeg's default layout for that many channels, or an unnamed one where it has none."""
    try:
        return av.AudioLayout(f"{channels}c")
    except ValueError:
        return av.AudioLayout(f"{channels} channels")


def encode_audio(
    samples: np.ndarray,
    sample_rate: int,
    fmt: str,
    *,
    channels: int = 1,
    bitrate: int | None = None,
) -> bytes:
    """Encode mono float samples into a real ``fmt`` file with PyAV, in memory.

    The mono signal is copied to ``channels`` identical channels ("ogg" is always stereo, see
    ``_FORMATS``). Encoders that cannot take ``sample_rate`` get the nearest rate they accept,
    via FFmpeg's resampler — like a real recorder would. ``bitrate`` is in bits per second.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    muxer, codec, options = _FORMATS[fmt]
    if codec == "vorbis":
        channels = 2
    # Lossy encoders take only some rates (Opus: 8–48 kHz steps, MP3: MPEG rates, AAC: ≤ 96 kHz):
    # use the nearest accepted rate at or above the source, else the highest.
    accepted = sorted(av.codec.Codec(codec, "w").audio_rates or ())
    rate = sample_rate
    if accepted and sample_rate not in accepted:
        rate = next((r for r in accepted if r >= sample_rate), accepted[-1])

    mono = np.ascontiguousarray(np.asarray(samples, dtype=np.float32).reshape(-1))
    layout = _layout(channels)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=muxer) as container:
        stream = container.add_stream(codec, rate=rate, options=dict(options))
        stream.codec_context.layout = layout
        stream.codec_context.time_base = Fraction(1, rate)
        if bitrate is not None:
            stream.codec_context.bit_rate = int(bitrate)
        codec_formats = stream.codec_context.codec.audio_formats or ()
        target_format = codec_formats[0].name if codec_formats else "flt"
        if codec == "flac":
            target_format = "s16"  # 16-bit FLAC, like most real files (s32 means 24-bit)
        resampler = av.AudioResampler(
            format=target_format,
            layout=layout,
            rate=rate,
            frame_size=stream.codec_context.frame_size or 1024,
        )
        # Packed float frame with the mono signal repeated across channels.
        interleaved = np.repeat(mono[:, None], channels, axis=1).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="flt", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = 0
        frame.time_base = Fraction(1, sample_rate)
        frames = [*resampler.resample(frame), *resampler.resample(None)] if mono.size else []
        for out in frames:
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
