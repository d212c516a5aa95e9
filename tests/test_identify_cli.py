"""`voicesearch identify FILE`: the timeline of a recording, from the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from tests.audio_factory import synth_voice, wav_bytes

SR = 16_000


def test_identify_prints_speakers_and_timeline(
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for role, path in tiny_model_dirs.items():
        monkeypatch.setenv(f"VOICESEARCH_MODEL_{role.upper()}", str(path))
    monkeypatch.setenv("VOICESEARCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VOICESEARCH_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VOICESEARCH_VAD", "energy")  # synthetic voices
    gap = np.zeros(SR, dtype=np.float32)
    recording = tmp_path / "call.wav"
    recording.write_bytes(
        wav_bytes(
            np.concatenate([synth_voice(4.0, seed=1, f0=110), gap, synth_voice(4.0, seed=2)]), SR
        )
    )

    assert main(["identify", str(recording), "--language", "en", "--num-speakers", "2"]) == 0
    captured = capsys.readouterr()
    assert "2 voice(s) (voxceleb space)" in captured.out
    assert "unknown_1" in captured.out and "unknown_2" in captured.out
    timeline = captured.out.split("timeline:")[1].strip().splitlines()
    assert timeline and timeline[0].startswith("00:00.")
    assert "win" in captured.err  # the progress bar, on stderr

    assert main(["identify", str(recording), "--format", "rttm", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("SPEAKER call 1 ") for line in lines)

    assert main(["identify", str(tmp_path / "missing.wav")]) == 2
    silence = tmp_path / "silence.wav"
    silence.write_bytes(wav_bytes(np.zeros(2 * SR, dtype=np.float32), SR))
    assert main(["identify", str(silence), "--no-progress"]) == 1
    assert "no_speech" in capsys.readouterr().err
