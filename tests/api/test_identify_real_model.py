"""`POST /identify-speakers` with the real VoxCeleb ECAPA and Silero VAD on a real conversation.

Two dev-speech speakers take four turns (sentences 3-6; they are enrolled from sentences 1-2,
never heard in the recording) with short pauses; both must be named, each turn attributed to
the right one. Skipped without ../shared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.decisions.cohort import shipped_cohort
from service.decisions.probe_quality import QualityTails, load_rules
from service.pipeline.audio import decode_audio
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import make_settings
from tests.audio_factory import wav_bytes
from tests.paths import DEV_SPEECH_DIR, REAL_VOXCELEB_DIR, requires_real_model

pytestmark = [requires_real_model, pytest.mark.real_model]

ASR_DIR = DEV_SPEECH_DIR / "speechbrain_samples" / "ASR"
SHIPPED = shipped_cohort("ecapa-voxceleb")
CLASSES: QualityTails = load_rules(SHIPPED.meta["quality_tails"]) or QualityTails(())
SR = 16_000


def sentence(speaker: str, n: int) -> np.ndarray:
    """A dev-speech sentence without its leading and trailing silence (so a turn's reference
    span is speech from end to end)."""
    data = (ASR_DIR / f"{speaker}_snt{n}.wav").read_bytes()
    samples = decode_audio(data, max_duration_s=60, min_duration_s=0).samples
    frames = samples[: samples.shape[0] // 160 * 160].reshape(-1, 160)
    level = 10 * np.log10(np.maximum((frames.astype(np.float64) ** 2).mean(axis=1), 1e-12))
    loud = np.flatnonzero(level > level.max() - 35.0)
    return samples[loud[0] * 160 : (loud[-1] + 1) * 160]


def conversation() -> tuple[bytes, list[tuple[str, float, float]]]:
    turns = [("spk1", (3, 4)), ("spk2", (3, 4, 5)), ("spk1", (5, 6)), ("spk2", (6,))]
    pause = np.zeros(round(0.8 * SR), dtype=np.float32)
    parts: list[np.ndarray] = [pause]
    reference = []
    cursor = pause.shape[0]
    for speaker, numbers in turns:
        turn = np.concatenate([sentence(speaker, n) for n in numbers])
        reference.append((speaker, cursor / SR, (cursor + turn.shape[0]) / SR))
        parts += [turn, pause]
        cursor += turn.shape[0] + pause.shape[0]
    noise = np.random.default_rng(0).standard_normal(cursor) * 1e-4  # a quiet room
    return wav_bytes(np.concatenate(parts) + noise.astype(np.float32), SR), reference


@pytest.fixture(scope="module")
def voxceleb_only(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    registry = ModelRegistry.load(
        {"voxceleb": str(REAL_VOXCELEB_DIR)}, cache_dir=tmp_path_factory.mktemp("cache")
    )
    assert registry.all_loaded, registry.statuses
    return registry


def test_two_enrolled_speakers_are_named_with_their_turns(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], voxceleb_only: ModelRegistry
) -> None:
    settings = make_settings(
        tmp_path / "data",
        {**tiny_model_dirs, "voxceleb": REAL_VOXCELEB_DIR},
        vad="silero",
        min_probe_speech_s=1.5,
    )
    data, reference = conversation()
    with TestClient(create_app(settings, models=voxceleb_only)) as client:
        for speaker in ("spk1", "spk2"):
            files = [
                ("audio", (f"{n}.wav", wav_bytes(sentence(speaker, n), SR), "audio/wav"))
                for n in (1, 2)
            ]
            enrolled = client.post("/speakers", files=files, data={"external_id": speaker})
            assert enrolled.status_code == 201, enrolled.text
        response = client.post(
            "/identify-speakers",
            files={"audio": ("talk.wav", data, "audio/wav")},
            data={"language": "en"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["speaker"] for s in body["speakers"]] == ["spk1", "spk2"], body["speakers"]
    assert body["threshold"] == body["speakers"][0]["threshold"]
    for found in body["speakers"]:
        assert found["decision"] == "match" and found["enrolled"] is True
        assert found["score"] >= found["threshold"]
        # Each voice is classed as a clip of its net speech and SNR would be: several clean
        # sentences, so long and clean, held to that class's higher bar.
        assert found["speech_s"] >= 2.0 and found["snr_db"] >= 20.0, found
        assert found["threshold_quality"] == "long_clean"
        rule = CLASSES.rule_for(found["speech_s"], found["snr_db"])
        assert rule is not None and rule.name == "long_clean"
        assert found["threshold"] == pytest.approx(
            rule.threshold("A", SHIPPED.tail("asnorm"), 0.03, 2), abs=1e-6
        )
    # Each reference turn: at least 85 % of it attributed to its speaker, at most 0.3 s to the
    # other one, and the speaker's segments start and end within 0.4 s of the turn's edges.
    for speaker, start, end in reference:
        inside = [
            (s["speaker"], max(start, s["start"]), min(end, s["end"]))
            for s in body["segments"]
            if s["end"] > start and s["start"] < end
        ]
        right = sum(e - s for who, s, e in inside if who == speaker)
        wrong = sum(e - s for who, s, e in inside if who != speaker)
        assert right >= 0.85 * (end - start), (speaker, start, end, inside)
        assert wrong <= 0.3, (speaker, start, end, inside)
        own = [s for s in body["segments"] if s["speaker"] == speaker and s["end"] > start - 0.4]
        own = [s for s in own if s["start"] < end + 0.4]
        assert abs(min(s["start"] for s in own) - start) <= 0.4
        assert abs(max(s["end"] for s in own) - end) <= 0.4


def test_an_unknown_voice_enrolled_from_its_token_is_named_next_time(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], voxceleb_only: ModelRegistry
) -> None:
    """Only spk1 is enrolled: spk2 is ``unknown_1``; enrolled by its enroll token (no
    re-upload), the same recording then names both."""
    settings = make_settings(
        tmp_path / "data",
        {**tiny_model_dirs, "voxceleb": REAL_VOXCELEB_DIR},
        vad="silero",
        min_probe_speech_s=1.5,
        min_enroll_speech_s=1.0,
    )
    data, _ = conversation()
    recording = {"audio": ("talk.wav", data, "audio/wav")}
    with TestClient(create_app(settings, models=voxceleb_only)) as client:
        files = [
            ("audio", (f"{n}.wav", wav_bytes(sentence("spk1", n), SR), "audio/wav")) for n in (1, 2)
        ]
        assert (
            client.post("/speakers", files=files, data={"external_id": "spk1"}).status_code == 201
        )
        first = client.post("/identify-speakers", files=recording, data={"language": "en"}).json()
        assert [s["speaker"] for s in first["speakers"]] == ["spk1", "unknown_1"], first
        assert first["speakers"][0]["enroll_token"] is None  # a named voice needs none
        unknown = first["speakers"][1]
        enrolled = client.post(
            "/speakers", data={"enroll_token": unknown["enroll_token"], "external_id": "spk2"}
        )
        assert enrolled.status_code == 201, enrolled.text
        assert enrolled.json()["speaker"]["searchable"] is True
        second = client.post("/identify-speakers", files=recording, data={"language": "en"}).json()
    assert [s["speaker"] for s in second["speakers"]] == ["spk1", "spk2"], second["speakers"]
    assert all(s["decision"] == "match" for s in second["speakers"])
    # The voice was heard in this very recording: it now matches far above the threshold.
    assert second["speakers"][1]["score"] > second["threshold"] + 0.2
