"""service.pipeline.vad: Silero on ONNX Runtime gives silero-vad's own segments, without torch."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import soundfile as sf

from bench.conditions.make_conditions import tel8k
from service.pipeline.audio import decode_audio
from service.pipeline.vad import SileroVad, timestamps_from_probabilities
from tests.audio_factory import synth_voice
from tests.paths import DEV_SPEECH_DIR, HAS_DEV_SPEECH, REPO_ROOT

SR = 16_000


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def silero_reference():
    """silero-vad's own TorchScript model and ``get_speech_timestamps`` (the reference).

    Importing the package sets torch to one thread for the whole process; put it back."""
    import torch

    threads = torch.get_num_threads()
    try:
        import silero_vad

        model = silero_vad.load_silero_vad(onnx=False)
    finally:
        torch.set_num_threads(threads)
    return silero_vad, model


def _clips() -> list[tuple[str, np.ndarray]]:
    if not HAS_DEV_SPEECH:
        return [(f"synth{seed}", synth_voice(3.0, seed=seed)) for seed in range(4)]
    out = []
    for meta in sorted(DEV_SPEECH_DIR.glob("*/metadata.csv")):
        for line in meta.read_text().splitlines()[1:]:
            path = meta.parent / line.split(",", 1)[0]
            audio = decode_audio(path.read_bytes(), max_duration_s=600, min_duration_s=0)
            out.append((path.name, audio.samples))
    return out


def _inputs() -> list[tuple[str, np.ndarray, int]]:
    """Every dev clip at 16 kHz; a third of them 30 dB quieter, and as 8 kHz telephone audio."""
    out = []
    for n, (name, samples) in enumerate(_clips()):
        out.append((f"{name} 16k", samples, SR))
        if n % 3 == 0:
            out.append((f"{name} quiet", (samples * 10 ** (-30 / 20)).astype(np.float32), SR))
            narrow, rate = sf.read(io.BytesIO(tel8k(samples, n)[0]), dtype="float32")
            out.append((f"{name} tel8k", narrow, rate))
    return out


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """The reference loop makes one tiny torch call per 32 ms frame: on more threads each call
    is an OpenMP region, which is very slow on a busy CPU (the very problem of issue 13)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)


def test_segments_equal_silero_vads_own(vad: SileroVad, silero_reference) -> None:
    import torch

    silero_vad, model = silero_reference
    speech_s = 0.0
    checked_8k = 0
    for name, samples, rate in _inputs():
        with one_torch_thread():
            stamps = silero_vad.get_speech_timestamps(
                torch.from_numpy(samples), model, sampling_rate=rate
            )
        expected = [(s["start"], s["end"]) for s in stamps]
        assert vad.speech_timestamps(samples, rate) == expected, name
        speech_s += sum(e - s for s, e in expected) / rate
        checked_8k += rate == 8_000
    assert speech_s > 10.0 and checked_8k >= 1  # mostly speech: the comparison is not vacuous


def test_probabilities_match_the_torchscript_model(vad: SileroVad, silero_reference) -> None:
    import torch

    _, model = silero_reference
    samples = _clips()[0][1][: 3 * SR]
    for rate, data in ((SR, samples), (8_000, samples[::2].copy())):
        window = 512 if rate == SR else 256
        model.reset_states()
        expected = []
        with one_torch_thread():
            for start in range(0, data.size, window):
                chunk = torch.from_numpy(data[start : start + window])
                chunk = torch.nn.functional.pad(chunk, (0, window - chunk.numel()))
                expected.append(model(chunk, rate).item())
        np.testing.assert_allclose(vad.speech_probabilities(data, rate), expected, atol=1e-4)


def test_state_machine_equals_silero_vads(silero_reference) -> None:
    silero_vad, _ = silero_reference
    rng = np.random.default_rng(0)
    for trial in range(200):
        rate = (SR, 8_000)[trial % 2]
        n = int(rng.integers(1, 300))
        probs = np.clip(
            np.repeat(rng.random(n // 5 + 1), 5)[:n] + 0.2 * rng.standard_normal(n), 0, 1
        )
        length = n * (512 if rate == SR else 256) - int(rng.integers(0, 200))
        kwargs = {}
        if trial % 3 == 0:
            kwargs = {
                "threshold": 0.6,
                "min_speech_duration_ms": 100,
                "min_silence_duration_ms": 300,
                "speech_pad_ms": 50,
            }
        expected = silero_vad.get_speech_timestamps_from_probs(
            probs.tolist(), sampling_rate=rate, audio_length_samples=length, **kwargs
        )
        got = timestamps_from_probabilities(probs, audio_length=length, sample_rate=rate, **kwargs)
        assert got == [(s["start"], s["end"]) for s in expected], trial


def test_bad_input(vad: SileroVad) -> None:
    assert vad.speech_timestamps(np.zeros(0, np.float32)) == []
    with pytest.raises(ValueError, match="8000 or 16000"):
        vad.speech_timestamps(np.zeros(SR, np.float32), 44_100)
    with pytest.raises(ValueError, match="NaN"):
        vad.speech_timestamps(np.full(SR, np.nan, np.float32))


def test_concurrent_calls_agree(vad: SileroVad) -> None:
    clips = [c for _, c in _clips()[:4]]
    expected = [vad.speech_timestamps(c) for c in clips]
    results: dict[int, list[tuple[int, int]]] = {}

    def work(i: int) -> None:
        results[i] = vad.speech_timestamps(clips[i % len(clips)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[i] == expected[i % len(clips)] for i in range(12))


def test_imports_neither_torch_nor_the_silero_package() -> None:
    """The package's import sets torch to one thread process-wide: the VAD must not need it."""
    code = (
        "import sys, numpy as np\n"
        "from service.pipeline.vad import SileroVad\n"
        "from tests.audio_factory import synth_voice\n"
        "SileroVad().speech_timestamps(synth_voice(2.0, seed=0))\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'silero_vad')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
