"""decode_audio / speech check: every accepted format, odd shapes, and every way an upload fails.

All inputs are synthesised and encoded on the fly (tests/audio_factory.py); no network, no
binary fixtures, no model.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

import service.pipeline.audio as audio_module
from service.core.errors import (
    AudioTooLong,
    AudioTooShort,
    EmptyAudio,
    ServiceError,
    UndecodableAudio,
)
from service.pipeline.audio import TARGET_SAMPLE_RATE, DecodedAudio, decode_audio
from service.pipeline.detection import SpeechDetector
from service.pipeline.speech import speech_seconds
from tests.audio_factory import FORMATS, encode_audio, synth_voice, wav_bytes

LIMITS = {"max_duration_s": 60.0, "min_duration_s": 0.5}

FFMPEG_FORMAT_NAME = {
    "wav": "wav",
    "flac": "flac",
    "ogg": "ogg",
    "opus": "ogg",
    "mp3": "mp3",
    "m4a": "mov,mp4,m4a,3gp,3g2,mj2",
    "webm": "matroska,webm",
}


def _decode(data: bytes, **overrides: float) -> DecodedAudio:
    return decode_audio(data, **{**LIMITS, **overrides})


def _assert_canonical(audio: DecodedAudio) -> None:
    samples = audio.samples
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert samples.flags.c_contiguous
    assert np.isfinite(samples).all()
    assert float(np.max(np.abs(samples))) <= 1.0


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return synth_voice(2.0)


# --- formats, channels, rates ----------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_to_16k_mono(voice: np.ndarray, fmt: str, channels: int) -> None:
    audio = _decode(encode_audio(voice, TARGET_SAMPLE_RATE, fmt, channels=channels))
    _assert_canonical(audio)
    # AAC in MP4 keeps up to ~60 ms of encoder priming; everything else is sample-accurate-ish.
    assert audio.duration_s == pytest.approx(2.0, abs=0.07)
    assert audio.source_format == FFMPEG_FORMAT_NAME[fmt]
    assert audio.source_channels == (2 if fmt == "ogg" else channels)  # our Vorbis is stereo
    assert speech_seconds(audio.samples) > 0.5


def test_pcm16_wav_at_16k_is_bit_exact(voice: np.ndarray) -> None:
    audio = _decode(wav_bytes(voice, TARGET_SAMPLE_RATE))
    expected = np.round(voice * 32767).astype(np.int16).astype(np.float32) / 32768
    np.testing.assert_allclose(audio.samples, expected, atol=1.5 / 32768)
    assert audio.source_sample_rate == TARGET_SAMPLE_RATE and audio.source_channels == 1


@pytest.mark.parametrize(
    ("fmt", "channels"),
    [("wav", 8), ("flac", 8), ("opus", 8), ("webm", 8), ("m4a", 8), ("wav", 20), ("wav", 64)],
)
def test_many_channels(fmt: str, channels: int) -> None:
    # 8 planar channels (Opus/AAC decode to planar float) used to segfault inside PyAV.
    audio = _decode(encode_audio(synth_voice(1.0), TARGET_SAMPLE_RATE, fmt, channels=channels))
    _assert_canonical(audio)
    assert audio.source_channels == channels
    assert audio.duration_s == pytest.approx(1.0, abs=0.07)


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 48_000, 96_000, 192_000])
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_odd_sample_rates(fmt: str, rate: int) -> None:
    audio = _decode(encode_audio(synth_voice(1.5, rate), rate, fmt))
    _assert_canonical(audio)
    assert audio.source_sample_rate == rate
    assert abs(audio.samples.shape[0] - 1.5 * TARGET_SAMPLE_RATE) <= 2


def test_8_channels_at_192k() -> None:
    audio = _decode(wav_bytes(synth_voice(1.0, 192_000), 192_000, channels=8))
    _assert_canonical(audio)
    assert (audio.source_channels, audio.source_sample_rate) == (8, 192_000)
    assert abs(audio.samples.shape[0] - TARGET_SAMPLE_RATE) <= 2


@pytest.mark.parametrize("rate", [22_050, 44_100, 48_000, 96_000])
def test_resampling_preserves_the_waveform(rate: int) -> None:
    """Two tones in the speech band must come out as the same tones, not just the right length."""

    def tones(sample_rate: int) -> np.ndarray:
        t = np.arange(int(1.0 * sample_rate)) / sample_rate
        return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3_000 * t)).astype(
            np.float32
        )

    decoded = _decode(wav_bytes(tones(rate), rate, subtype="FLOAT")).samples
    expected = tones(TARGET_SAMPLE_RATE)
    assert decoded.shape == expected.shape
    edge = 400  # the filter's start-up and tail
    error = np.abs(decoded[edge:-edge] - expected[edge:-edge]).max()
    assert error < 2e-3


def test_resampling_rejects_what_would_alias() -> None:
    """A 9 kHz tone in a 48 kHz file is above the 16 kHz Nyquist: it must vanish, not fold
    down to 7 kHz where the speaker model would hear it."""
    t = np.arange(48_000) / 48_000
    decoded = _decode(wav_bytes((0.5 * np.sin(2 * np.pi * 9_000 * t)).astype(np.float32), 48_000))
    level_db = 20 * np.log10(np.sqrt(np.mean(decoded.samples[400:-400] ** 2)) / (0.5 / np.sqrt(2)))
    assert level_db < -60


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_sample_formats(voice: np.ndarray, subtype: str) -> None:
    audio = _decode(wav_bytes(voice, TARGET_SAMPLE_RATE, subtype=subtype))
    tolerance = 1 / 64 if subtype == "PCM_U8" else 1e-4
    np.testing.assert_allclose(audio.samples, voice, atol=tolerance)


def test_mu_law_wav(voice: np.ndarray) -> None:
    audio = _decode(wav_bytes(voice, TARGET_SAMPLE_RATE, subtype="ULAW"))
    assert np.corrcoef(audio.samples, voice)[0, 1] > 0.999


def test_stereo_is_averaged(voice: np.ndarray) -> None:
    left_only = np.stack([voice, np.zeros_like(voice)], axis=1)
    audio = _decode(wav_bytes(left_only, TARGET_SAMPLE_RATE, subtype="FLOAT"))
    np.testing.assert_allclose(audio.samples, voice / 2, atol=1e-6)


def test_float_input_beyond_full_scale_is_scaled_not_clipped(voice: np.ndarray) -> None:
    audio = _decode(wav_bytes(voice * 10, TARGET_SAMPLE_RATE, subtype="FLOAT"))
    _assert_canonical(audio)
    np.testing.assert_allclose(audio.samples, voice / np.abs(voice).max(), atol=1e-5)


def test_sample_rate_change_mid_stream() -> None:
    # Two MP3s glued together (what some "joiners" produce): 16 kHz, then 44.1 kHz.
    first = encode_audio(synth_voice(1.0), TARGET_SAMPLE_RATE, "mp3")
    second = encode_audio(synth_voice(1.0, 44_100), 44_100, "mp3")
    audio = _decode(first + second)
    _assert_canonical(audio)
    assert audio.duration_s == pytest.approx(2.0, abs=0.15)


@pytest.mark.parametrize(
    ("sf_format", "ffmpeg_name"),
    [("NIST", "nistsphere"), ("AIFF", "aiff"), ("CAF", "caf"), ("AU", "au"), ("W64", "w64"),
     ("RF64", "wav"), ("WAVEX", "wav")],
)  # fmt: skip
def test_other_pcm_containers(sf_format: str, ffmpeg_name: str) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, synth_voice(1.0), TARGET_SAMPLE_RATE, format=sf_format, subtype="PCM_16")
    audio = _decode(buffer.getvalue())
    assert audio.source_format == ffmpeg_name
    assert audio.duration_s == pytest.approx(1.0, abs=1e-3)


def test_tags_that_are_not_utf8_are_ignored(voice: np.ndarray) -> None:
    """A WAV whose LIST/INFO title is Latin-1 (common from Windows tools) still decodes."""
    title = b"Caf\xe9 \xe0 la radio\x00"
    info = b"INFO" + b"INAM" + struct.pack("<I", len(title)) + title
    data = bytearray(wav_bytes(voice, TARGET_SAMPLE_RATE) + b"LIST")
    data += struct.pack("<I", len(info)) + info
    data[4:8] = struct.pack("<I", len(data) - 8)  # RIFF size
    assert _decode(bytes(data)).duration_s == 2.0


# --- DecodedAudio ------------------------------------------------------------------------------
def test_sha256_identifies_the_decoded_audio(voice: np.ndarray) -> None:
    # The same 16-bit samples in two lossless containers (quantised here: libsndfile's WAV and
    # FLAC writers round differently).
    pcm = np.round(voice * 32767).astype(np.int16)
    wav, flac = io.BytesIO(), io.BytesIO()
    sf.write(wav, pcm, TARGET_SAMPLE_RATE, format="WAV", subtype="PCM_16")
    sf.write(flac, pcm, TARGET_SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    as_wav, as_flac = _decode(wav.getvalue()), _decode(flac.getvalue())
    other = _decode(wav_bytes(synth_voice(2.0, seed=1), TARGET_SAMPLE_RATE))
    assert as_wav.sha256 == as_flac.sha256
    assert as_wav.sha256 != other.sha256
    assert len(as_wav.sha256) == 64 and int(as_wav.sha256, 16) >= 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        as_wav.source_format = "x"  # type: ignore[misc]


# --- failures --------------------------------------------------------------------------------
def test_empty_upload() -> None:
    with pytest.raises(EmptyAudio):
        _decode(b"")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(np.random.default_rng(0).bytes(20_000), id="random-bytes"),
        pytest.param(np.random.default_rng(1).bytes(7), id="seven-random-bytes"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(300), id="png-header"),
        pytest.param(b"RIFF\x24\x00\x00\x00WAVE" + b"this is text, not a wav " * 40, id="text-wav"),
        pytest.param(b"just some text someone named voice.wav\n" * 100, id="plain-text"),
        pytest.param(b"%PDF-1.7\n" + bytes(500), id="pdf"),
        pytest.param(b"#EXTM3U\n#EXTINF:10,\nclip.wav\n#EXT-X-ENDLIST\n", id="m3u8-playlist"),
    ],
)
def test_not_audio(data: bytes) -> None:
    with pytest.raises(UndecodableAudio) as caught:
        _decode(data)
    assert caught.value.details.get("reason")


def test_playlists_cannot_read_server_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ffconcat upload naming a file beside the server must not decode that file."""
    (tmp_path / "secret.wav").write_bytes(wav_bytes(synth_voice(1.0), TARGET_SAMPLE_RATE))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UndecodableAudio):
        _decode(b"ffconcat version 1.0\nfile secret.wav\n")


def test_container_without_audio_stream() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for index in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 1)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(UndecodableAudio) as caught:
        _decode(buffer.getvalue())
    assert caught.value.details["reason"] == "no audio stream"


def test_header_without_samples() -> None:
    with pytest.raises(UndecodableAudio) as caught:
        _decode(wav_bytes(np.zeros(0, np.float32), TARGET_SAMPLE_RATE))
    assert caught.value.details["reason"] == "no samples decoded"


def test_non_finite_float_samples() -> None:
    samples = synth_voice(1.0)
    samples[100] = np.nan
    with pytest.raises(UndecodableAudio):
        _decode(wav_bytes(samples, TARGET_SAMPLE_RATE, subtype="FLOAT"))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(wav_bytes(np.zeros((1_000, 65), np.float32), 16_000), id="65-channels"),
        pytest.param(wav_bytes(np.zeros(1_000, np.float32), 500), id="500-Hz"),
        pytest.param(wav_bytes(np.zeros(10_000, np.float32), 800_000), id="800-kHz"),
    ],
)
def test_implausible_streams(data: bytes) -> None:
    with pytest.raises(UndecodableAudio):
        _decode(data)


def test_one_sample() -> None:
    data = wav_bytes(np.array([0.5], np.float32), TARGET_SAMPLE_RATE)
    with pytest.raises(AudioTooShort):
        _decode(data)
    assert _decode(data, min_duration_s=0.0).samples.shape == (1,)


def test_too_short(voice: np.ndarray) -> None:
    with pytest.raises(AudioTooShort) as caught:
        _decode(wav_bytes(voice[:4_000], TARGET_SAMPLE_RATE))
    assert caught.value.details == {"duration_s": 0.25, "min_duration_s": 0.5}


def test_too_long_and_exactly_at_the_cap(voice: np.ndarray) -> None:
    data = wav_bytes(voice, TARGET_SAMPLE_RATE)
    with pytest.raises(AudioTooLong) as caught:
        _decode(data, max_duration_s=1.5)
    assert caught.value.details == {"max_duration_s": 1.5}
    assert _decode(data, max_duration_s=2.0).duration_s == 2.0


@pytest.mark.alone  # a wall-clock bound (tests/parallel.py)
def test_cap_stops_decoding_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """28 kB of FLAC that decodes to 10 minutes: with a 5 s cap, only ~5 s is ever decoded."""
    buffer = io.BytesIO()
    silence = np.zeros(TARGET_SAMPLE_RATE * 600, np.int16)
    sf.write(buffer, silence, TARGET_SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    data = buffer.getvalue()
    assert len(data) < 100_000

    converted: list[int] = []
    real_to_mono = audio_module._to_mono

    def counting_to_mono(frame: av.AudioFrame) -> np.ndarray:
        converted.append(frame.samples)
        return real_to_mono(frame)

    monkeypatch.setattr(audio_module, "_to_mono", counting_to_mono)
    started = time.perf_counter()
    with pytest.raises(AudioTooLong):
        _decode(data, max_duration_s=5.0)
    elapsed = time.perf_counter() - started
    # The frame that crosses the cap is never converted; FLAC frames here are ≤ 4608 samples.
    assert sum(converted) <= 5 * TARGET_SAMPLE_RATE
    assert elapsed < 1.0  # the whole file takes ~30x longer than the capped part


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "opus", "webm"])
def test_truncated_file_keeps_what_decoded(fmt: str) -> None:
    data = encode_audio(synth_voice(4.0), TARGET_SAMPLE_RATE, fmt)
    audio = _decode(data[: len(data) * 3 // 4])
    _assert_canonical(audio)
    assert 1.0 < audio.duration_s < 3.9


@pytest.mark.parametrize("fmt", FORMATS)
def test_badly_truncated_file_is_a_clean_error(fmt: str) -> None:
    data = encode_audio(synth_voice(2.0), TARGET_SAMPLE_RATE, fmt)
    for cut in (8, 60, len(data) // 20):
        with pytest.raises((UndecodableAudio, AudioTooShort)):
            _decode(data[:cut])


def test_truncated_m4a_without_index_is_undecodable() -> None:
    # FFmpeg writes the MP4 index (moov) at the end: without it nothing can be located.
    data = encode_audio(synth_voice(2.0), TARGET_SAMPLE_RATE, "m4a")
    with pytest.raises(UndecodableAudio):
        _decode(data[: len(data) * 3 // 4])


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupted_files_never_escape_as_raw_errors(fmt: str) -> None:
    """Overwrite random spans of a real file: the result is audio or a ServiceError, nothing
    else (and no crash)."""
    original = encode_audio(synth_voice(2.0), TARGET_SAMPLE_RATE, fmt)
    rng = np.random.default_rng(42)
    for _ in range(8):
        data = bytearray(original)
        for _ in range(3):
            start = int(rng.integers(0, len(data)))
            span = int(rng.integers(1, 400))
            data[start : start + span] = rng.bytes(min(span, len(data) - start))
        try:
            audio = _decode(bytes(data), min_duration_s=0.0)
        except ServiceError:
            continue
        _assert_canonical(audio)


def test_unexpected_internal_errors_become_undecodable(
    voice: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(frame: av.AudioFrame) -> np.ndarray:
        raise ValueError("boom")

    monkeypatch.setattr(audio_module, "_to_mono", broken)
    with pytest.raises(UndecodableAudio):
        _decode(wav_bytes(voice, TARGET_SAMPLE_RATE))


def test_decoding_is_fast() -> None:
    data = wav_bytes(synth_voice(5.0), TARGET_SAMPLE_RATE)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        _decode(data)
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.05  # ~3 ms on a laptop core; generous for busy CI machines


# --- speech check ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def energy_detector() -> SpeechDetector:
    return SpeechDetector(vad="energy")


def test_digital_silence_is_inaudible(energy_detector: SpeechDetector) -> None:
    audio = _decode(wav_bytes(np.zeros(2 * TARGET_SAMPLE_RATE, np.float32), TARGET_SAMPLE_RATE))
    found = energy_detector.detect(audio.samples, audio.source_sample_rate)
    assert found.audible is False and found.speech_s == 0.0 and found.level_dbfs == -200.0


def test_dither_is_inaudible_but_quiet_hiss_is_not(energy_detector: SpeechDetector) -> None:
    # Issue 12: only what is inaudible (99.9th percentile of |x| below -75 dBFS) is refused.
    # Dither at -90 dBFS RMS peaks near -80 dBFS; hiss at -70 dBFS RMS (peak about -60) was
    # refused by the old energy gate and is now accepted (no speech found in it).
    rng = np.random.default_rng(0)
    dither = rng.standard_normal(2 * TARGET_SAMPLE_RATE) * 10 ** (-90 / 20)
    assert energy_detector.detect(dither.astype(np.float32)).audible is False
    hiss = energy_detector.detect(
        (rng.standard_normal(2 * TARGET_SAMPLE_RATE) * 10 ** (-70 / 20)).astype(np.float32)
    )
    assert hiss.audible is True and hiss.speech_s == 0.0


def test_voice_is_found_by_the_energy_detector(
    voice: np.ndarray, energy_detector: SpeechDetector
) -> None:
    found = energy_detector.detect(voice)
    assert found.audible and found.speech_s == pytest.approx(speech_seconds(voice))
    assert 0.5 < found.speech_s <= 2.0


def test_quiet_voice_still_counts(voice: np.ndarray) -> None:
    # Peak -26 dBFS (RMS about -35 dBFS while voiced): a quiet but ordinary recording.
    assert speech_seconds(voice * 0.1) == pytest.approx(speech_seconds(voice), abs=0.1)


def test_only_the_voiced_part_counts(voice: np.ndarray) -> None:
    background = np.random.default_rng(1).standard_normal(voice.shape[0]) * 10 ** (-75 / 20)
    padded = np.concatenate([voice, background.astype(np.float32)])
    assert speech_seconds(padded) == pytest.approx(speech_seconds(voice), abs=0.05)


def test_background_far_below_the_talker_is_not_speech() -> None:
    # Loud talker at 0 dB, a -45 dBFS room tone after it: above the absolute floor, but more
    # than 40 dB below the loudest frame.
    tone = 0.9 * np.sin(2 * np.pi * 200 * np.arange(TARGET_SAMPLE_RATE) / TARGET_SAMPLE_RATE)
    room = np.random.default_rng(2).standard_normal(TARGET_SAMPLE_RATE) * 10 ** (-45 / 20)
    seconds = speech_seconds(np.concatenate([tone, room]).astype(np.float32))
    assert seconds == pytest.approx(1.0, abs=0.03)


def test_shorter_than_a_frame() -> None:
    assert speech_seconds(np.full(100, 0.5, np.float32)) == 0.0
