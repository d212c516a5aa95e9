"""`voicesearch eval`: a synthetic manifest end to end with tiny models, and the real model on
dev-speech (skipped without ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from service.evaluation import evaluate, trials
from tests.audio_factory import encode_audio, synth_voice, wav_bytes
from tests.paths import DEV_SPEECH_DIR, REAL_VOXCELEB_DIR, REPO_ROOT, requires_real_model

MANIFEST = REPO_ROOT / "bench" / "manifests" / "dev-speech.csv"


def _write_manifest(root: Path) -> Path:
    root.mkdir(parents=True)
    lines = ["path,speaker,role,language"]
    for n, f0 in enumerate((95.0, 150.0, 230.0)):
        speaker = f"s{n}"
        (root / speaker).mkdir()
        for clip in range(3):
            name = f"{speaker}/c{clip}.wav"
            audio = synth_voice(1.5, seed=10 * n + clip, f0=f0)
            (root / name).write_bytes(wav_bytes(audio, 16_000))
            lines.append(f"{name},{speaker},{'probe' if clip == 2 else 'enroll'},en")
    (root / "stranger.mp3").write_bytes(
        encode_audio(synth_voice(1.5, seed=99, f0=180.0), 16_000, "mp3")
    )
    lines.append("stranger.mp3,nobody,probe,")  # unenrolled, language left to detection
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_eval_command_end_to_end(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    manifest = _write_manifest(tmp_path / "set")
    for role, path in tiny_model_dirs.items():
        monkeypatch.setenv(f"VOICESEARCH_MODEL_{role.upper()}", str(path))
    monkeypatch.setenv("VOICESEARCH_DATA_DIR", str(data))
    monkeypatch.setenv("VOICESEARCH_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VOICESEARCH_VAD", "energy")  # synthetic audio: energy speech check
    out = tmp_path / "out"
    json_path = tmp_path / "figures.json"

    assert main(["eval", str(manifest), "--json", str(json_path), "--out", str(out)]) == 0

    figures = json.loads(json_path.read_text())
    for key in evaluate.KEYS:
        assert key in figures and key in figures["reference"], key
    assert figures["closed_set_probes"] == 3 and figures["open_set_probes"] == 1
    assert figures["genuine_trials"] == 3 and figures["impostor_trials"] == 3 * 2 + 3
    assert 0.0 <= figures["eer"] <= 1.0 and 0.0 <= figures["top1"] <= figures["top5"] <= 1.0
    # Same weights, same audio: the service and the bare model agree closely.
    assert figures["max_abs_score_difference"] < 0.05
    assert (out / "eval-manifest.md").is_file() and (out / "eval-manifest-det.png").is_file()
    assert not any(data.glob("**/*.db")), "eval must not touch the configured data directory"


def test_manifest_validation(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(wav_bytes(synth_voice(1.0), 16_000))
    bad = tmp_path / "bad.csv"
    bad.write_text("path,speaker,role\na.wav,x,train\n")
    with pytest.raises(ValueError, match="role"):
        trials.read_manifest(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("path,speaker,role\nnope.wav,x,enroll\n")
    with pytest.raises(FileNotFoundError):
        trials.read_manifest(missing)


def test_metrics_on_known_scores() -> None:
    result = evaluate.SystemResult(
        scores=np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.6], [0.1, 0.2]]),
        speakers=["a", "b"],
        probe_speakers=["a", "b", "a", "z"],
        threshold=0.5,
    )
    m = evaluate.compute_metrics(result)
    assert m["top1"] == pytest.approx(2 / 3) and m["top5"] == 1.0
    assert m["genuine_trials"] == 3 and m["impostor_trials"] == 5
    assert m["frr_at_threshold"] == pytest.approx(1 / 3)  # 0.3 < 0.5
    assert m["far_at_threshold"] == pytest.approx(1 / 5)  # only 0.6 (probe 3 vs b)
    assert m["open_set_false_match_rate"] == 0.0


@requires_real_model
def test_real_model_dev_speech_top1(tmp_path: Path) -> None:
    from service.core.settings import Settings
    from service.pipeline.registry import ModelRegistry

    settings = Settings(
        data_dir=tmp_path / "data",
        model_voxceleb=str(REAL_VOXCELEB_DIR),
        model_cache_dir=tmp_path / "cache",
    )
    models = ModelRegistry.load(
        {"voxceleb": str(REAL_VOXCELEB_DIR)}, cache_dir=tmp_path / "cache", device="cpu"
    )
    rows = trials.read_manifest(MANIFEST, DEV_SPEECH_DIR)
    result = evaluate.evaluate(settings, models, rows, MANIFEST)
    assert result.service.metrics["top1"] == 1.0
    assert result.reference.metrics["top1"] == 1.0
    assert np.max(np.abs(result.service.scores - result.reference.scores)) < 0.05
    # The operating point is in the units both systems are scored in (cosines), even though
    # this checkpoint's find-match decides on AS-norm: the cosine rule's t(N) at N = 6.
    from service.decisions.cohort import shipped_cohort

    t6 = shipped_cohort("ecapa-voxceleb").tail("cosine").threshold(0.03, 6)
    assert result.service.threshold == pytest.approx(t6)
    assert result.reference.threshold == pytest.approx(t6)
    assert result.service.metrics["frr_at_threshold"] == 0.0  # every genuine cosine clears it
