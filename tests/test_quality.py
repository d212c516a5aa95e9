"""Speech quality: each feedback code, Silero VAD on real speech, trimming."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline.audio import decode_audio
from service.pipeline.quality import QualityAssessor
from tests.audio_factory import synth_voice
from tests.paths import DEV_SPEECH_DIR, HAS_DEV_SPEECH

SR = 16_000


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


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        ("clean", lambda: voice(), "ok"),
        ("clipped", lambda: np.clip(voice() * 4, -1, 1), "clipped"),
        ("quiet", lambda: voice() * 0.05, "too_quiet"),
        ("noisy", lambda: with_noise(voice(), 5.0), "low_snr"),
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


def test_silero_rejects_silence_and_noise_only(silero: QualityAssessor) -> None:
    assert silero.assess(np.zeros(2 * SR, np.float32)).report.codes == ["no_speech"]
    hum = (0.01 * np.random.default_rng(1).standard_normal(3 * SR)).astype(np.float32)
    assert silero.assess(hum).report.rejected


def test_silero_noise_is_low_snr(silero: QualityAssessor) -> None:
    report = silero.assess(with_noise(voice(), 5.0)).report
    assert "low_snr" in report.codes and report.snr_db < 10


@pytest.mark.skipif(not HAS_DEV_SPEECH, reason="dev-speech not available")
def test_silero_on_real_speech_trims_padding(silero: QualityAssessor) -> None:
    path = DEV_SPEECH_DIR / "speechbrain_samples" / "ASR" / "spk1_snt1.wav"
    audio = decode_audio(path.read_bytes(), max_duration_s=60, min_duration_s=0)
    clean = silero.assess(audio.samples)
    assert clean.report.codes == ["ok"]
    assert clean.report.speech_s > 2.0 and clean.report.snr_db > 20
    # 2 s of silence either side: same net speech, and trimmed back to about the clip.
    padded = np.concatenate([np.zeros(2 * SR, np.float32), audio.samples, np.zeros(2 * SR)])
    result = silero.assess(padded.astype(np.float32))
    assert result.report.speech_s == pytest.approx(clean.report.speech_s, abs=0.2)
    assert result.samples.shape[0] < audio.samples.shape[0] + 0.5 * SR


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
