"""Speech quality: each feedback code, speech detection that never refuses audible speech
(issue 12: quiet, telephone band, both), the SNR estimate, and what is refused."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import signal

from service.pipeline.audio import decode_audio
from service.pipeline.quality import QualityAssessor, frame_powers, snr_db_of, speech_frame_mask
from tests.audio_factory import synth_voice, wav_bytes
from tests.paths import DEV_SPEECH_DIR, HAS_DEV_SPEECH

SR = 16_000
requires_dev_speech = pytest.mark.skipif(not HAS_DEV_SPEECH, reason="dev-speech not available")
DEV_CLIPS = (
    "speechbrain_samples/ASR/spk1_snt1.wav",
    "speechbrain_samples/ASR/spk2_snt2.wav",
    "speechbrain_samples/single-mic/example2.flac",
    "rtvc_samples/p240_00000.mp3",
)


@pytest.fixture(scope="module")
def energy() -> QualityAssessor:
    return QualityAssessor(vad="energy", min_probe_speech_s=1.0)


@pytest.fixture(scope="module")
def silero() -> QualityAssessor:
    return QualityAssessor(vad="silero", min_probe_speech_s=1.0)


def voice(seconds: float = 3.0) -> np.ndarray:
    return synth_voice(seconds, seed=0).astype(np.float32)


def with_noise(x: np.ndarray, snr_db: float) -> np.ndarray:
    noise = np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    noise *= np.sqrt(np.mean(x**2) / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def upload(samples: np.ndarray, rate: int = SR) -> tuple[np.ndarray, int]:
    """As the service sees it: a 16-bit WAV at ``rate``, decoded → (16 kHz samples, source
    rate)."""
    audio = decode_audio(
        wav_bytes(samples.astype(np.float32), rate), max_duration_s=60.0, min_duration_s=0.0
    )
    return audio.samples, audio.source_sample_rate


def telephone(x: np.ndarray) -> tuple[np.ndarray, int]:
    """300-3400 Hz band, uploaded as an 8 kHz WAV."""
    sos = signal.butter(6, [300, 3400], btype="bandpass", fs=SR, output="sos")
    return upload(signal.resample_poly(signal.sosfilt(sos, x), 1, 2), 8_000)


def dev_clip(name: str) -> np.ndarray:
    data = (DEV_SPEECH_DIR / name).read_bytes()
    return decode_audio(data, max_duration_s=60.0, min_duration_s=0.0).samples


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        ("clean", lambda: voice(), "ok"),
        ("clipped", lambda: np.clip(voice() * 4, -1, 1), "clipped"),
        ("quiet", lambda: voice() * 0.05, "too_quiet"),
        ("noisy", lambda: with_noise(voice(), 0.0), "low_snr"),
        ("silent", lambda: np.zeros(3 * SR, np.float32), "no_speech"),
        ("short", lambda: voice(1.0), "too_short"),
    ],
)
def test_codes_energy_vad(energy: QualityAssessor, name: str, make, code: str) -> None:
    report = energy.assess(make()).report
    assert code in report.codes, (name, report)
    assert report.rejected == (code == "no_speech")
    if code == "ok":
        assert report.codes == ["ok"]


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: np.zeros(3 * SR),
        lambda rng: rng.standard_normal(3 * SR) * 10 ** (-90 / 20),  # dither
    ],
    ids=["digital-silence", "dither-90dBFS"],
)
def test_nothing_audible_is_refused(silero: QualityAssessor, make: Callable) -> None:
    samples, rate = upload(make(np.random.default_rng(1)))
    report = silero.assess(samples, rate).report
    assert report.codes == ["no_speech"] and report.rejected and report.peak_dbfs < -75


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: rng.standard_normal(3 * SR) * 0.1,  # white noise, -20 dBFS RMS
        lambda rng: 0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * SR) / SR),  # a tone
    ],
    ids=["white-noise", "tone"],
)
def test_audible_non_speech_is_accepted_with_a_warning(
    silero: QualityAssessor, make: Callable
) -> None:
    samples, rate = upload(make(np.random.default_rng(2)))
    report = silero.assess(samples, rate).report
    assert not report.rejected
    assert report.codes == ["no_speech_detected"]
    assert report.speech_s == 0.0 and report.snr_db is None


@requires_dev_speech
@pytest.mark.parametrize("clip", DEV_CLIPS)
@pytest.mark.parametrize(
    ("condition", "attenuation_db", "narrowband"),
    [
        ("quiet-20", 20, False),
        ("quiet-30", 30, False),
        ("quiet-35", 35, False),
        ("tel8k", 0, True),
        ("quiet-20+tel8k", 20, True),
        ("quiet-35+tel8k", 35, True),
    ],
)
def test_real_speech_is_never_refused(
    silero: QualityAssessor, clip: str, condition: str, attenuation_db: float, narrowband: bool
) -> None:
    x = dev_clip(clip) * np.float32(10 ** (-attenuation_db / 20))
    samples, rate = telephone(x) if narrowband else upload(x)
    assert rate == (8_000 if narrowband else SR)
    report = silero.assess(samples, rate).report
    assert not report.rejected, (condition, report)
    assert report.speech_s > 0.5 * dev_clip(clip).size / SR, (condition, report)
    assert "no_speech_detected" not in report.codes


@requires_dev_speech
def test_padding_with_silence_keeps_the_net_speech(silero: QualityAssessor) -> None:
    x = dev_clip(DEV_CLIPS[0])
    clean = silero.assess(x).report
    assert clean.codes == ["ok"] and clean.speech_s > 2.0 and clean.snr_db > 20
    padded = np.concatenate([np.zeros(2 * SR, np.float32), x, np.zeros(2 * SR, np.float32)])
    report = silero.assess(padded).report
    assert report.speech_s == pytest.approx(clean.speech_s, abs=0.2)
    assert report.duration_s == pytest.approx(clean.duration_s + 4.0)


@requires_dev_speech
@pytest.mark.parametrize("clip", DEV_CLIPS)
def test_snr_estimate_on_white_noise_at_5_db(silero: QualityAssessor, clip: str) -> None:
    """True SNR as issue 12 measured it: the clean clip's active-speech power (frames inside
    its speech segments) over the added noise's power."""
    x = dev_clip(clip)
    powers = frame_powers(x)
    active = speech_frame_mask(silero.detector.detect(x).segments, powers.size)
    noise = np.random.default_rng(5).standard_normal(x.size)
    noise *= np.sqrt(powers[active].mean() / 10 ** (5 / 10))
    report = silero.assess(*upload(x + noise)).report
    assert report.snr_db == pytest.approx(5.0, abs=1.5)
    assert "low_snr" in report.codes


def test_the_snr_of_given_speech_segments_is_the_assessments(energy: QualityAssessor) -> None:
    """Recordings' voices and live windows get their SNR from ``snr_db_of`` over speech found
    elsewhere: on a clip's own segments it is exactly what ``assess`` reports for the clip."""
    voice = synth_voice(3.0, seed=4)
    x = np.concatenate([np.zeros(8_000, np.float32), voice, np.zeros(8_000, np.float32)])
    x = x + np.random.default_rng(2).standard_normal(x.size).astype(np.float32) * 0.003
    assessed = energy.assess(x)
    assert assessed.report.snr_db is not None
    assert snr_db_of(x, assessed.detection.segments) == pytest.approx(assessed.report.snr_db)
    assert snr_db_of(x, []) is None  # no speech: unknown, as assess says


def test_concurrent_use_is_safe(silero: QualityAssessor) -> None:
    from concurrent.futures import ThreadPoolExecutor

    x = with_noise(voice(), 20.0)
    want = silero.assess(x).report.speech_s
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: silero.assess(x).report.speech_s, range(8)))
    assert got == [want] * 8


def test_loading_silero_keeps_the_torch_thread_count() -> None:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        QualityAssessor(vad="silero")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
