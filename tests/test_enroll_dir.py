"""`voicesearch enroll-dir`: one speaker per sub-folder, through the service's enrollment."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main
from service.commands.enroll_dir import speaker_folders
from tests.audio_factory import encode_audio, synth_voice, wav_bytes


def _env(monkeypatch: pytest.MonkeyPatch, tiny: dict[str, Path], tmp_path: Path) -> Path:
    for role, path in tiny.items():
        monkeypatch.setenv(f"VOICESEARCH_MODEL_{role.upper()}", str(path))
    data = tmp_path / "data"
    monkeypatch.setenv("VOICESEARCH_DATA_DIR", str(data))
    monkeypatch.setenv("VOICESEARCH_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VOICESEARCH_VAD", "energy")  # synthetic audio: energy speech check
    monkeypatch.setenv("VOICESEARCH_MIN_ENROLL_SPEECH_S", "0")  # short synthetic clips
    monkeypatch.setenv("VOICESEARCH_MAX_FILES_PER_ENROLLMENT", "2")  # exercise chunking
    return data


def test_enroll_dir_enrolls_each_folder_and_reports_rate(
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _env(monkeypatch, tiny_model_dirs, tmp_path)
    root = tmp_path / "people"
    for n, f0 in enumerate((100.0, 160.0)):
        folder = root / f"person{n}"
        folder.mkdir(parents=True)
        for clip in range(3):
            (folder / f"{clip}.wav").write_bytes(
                wav_bytes(synth_voice(2.5, seed=10 * n + clip, f0=f0), 16_000)
            )
        (folder / "notes.txt").write_text("not audio")
    (root / "person2").mkdir()
    (root / "person2" / "a.mp3").write_bytes(encode_audio(synth_voice(2.5, seed=7), 16_000, "mp3"))
    (root / "empty").mkdir()
    assert [name for name, _ in speaker_folders(root)] == ["person0", "person1", "person2"]

    assert main(["enroll-dir", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "enrolled 3" in out and "7 files" in out and "speakers/minute" in out

    # Again: existing speakers are skipped; --add tops them up (idempotent per clip).
    assert main(["enroll-dir", str(root), "--no-progress"]) == 0
    assert "skipped 3 existing" in capsys.readouterr().out
    assert main(["enroll-dir", str(root), "--no-progress", "--add"]) == 0
    assert "added to 3" in capsys.readouterr().out

    from service.bootstrap import build_voicesearch, load_models, open_database
    from service.core.settings import Settings

    settings = Settings()
    engine = open_database(settings)
    try:
        vs = build_voicesearch(settings, load_models(settings), engine)
        assert vs.store.get("person0").utterance_count == 3
        assert vs.gallery.size("voxceleb") == 3
    finally:
        engine.dispose()


def test_enroll_dir_reports_failures(
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _env(monkeypatch, tiny_model_dirs, tmp_path)
    root = tmp_path / "people"
    (root / "good").mkdir(parents=True)
    (root / "good" / "a.wav").write_bytes(wav_bytes(synth_voice(2.5), 16_000))
    (root / "bad").mkdir()
    (root / "bad" / "a.wav").write_bytes(b"RIFF not really a wave file")
    assert main(["enroll-dir", str(root), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "enrolled 1" in captured.out and "failed 1" in captured.out
    assert main(["enroll-dir", str(tmp_path / "nowhere")]) == 2


def test_enroll_dir_names_who_is_not_searchable_yet_and_who_was_skipped(
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _env(monkeypatch, tiny_model_dirs, tmp_path)
    monkeypatch.setenv("VOICESEARCH_MIN_ENROLL_SPEECH_S", "2.5")  # more than one clip has
    root = tmp_path / "people"
    for name, clips in (("long", 2), ("short", 1)):
        (root / name).mkdir(parents=True)
        for clip in range(clips):
            (root / name / f"{clip}.wav").write_bytes(
                wav_bytes(synth_voice(2.5, seed=len(name) + clip), 16_000)
            )
    assert main(["enroll-dir", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "enrolled 2" in out
    not_searchable = next(line for line in out.splitlines() if "NOT SEARCHABLE YET" in line)
    assert "short (1.5 s)" in not_searchable and "long (" not in not_searchable
    # Both are below the recommended 8 s: named with their net speech and tier.
    assert "(net speech per speaker; good >= 8 s, weak < 3 s): fair 1, weak 1" in out
    below = next(line for line in out.splitlines() if "below the recommended 8 s" in line)
    assert "long (3.0 s, fair)" in below and "short" not in below
    assert main(["enroll-dir", str(root), "--no-progress"]) == 0
    assert "skipped (already enrolled; --add adds their files): long, short" in (
        capsys.readouterr().out
    )
