"""Speech quality over HTTP: feedback codes, incomplete enrollments, probe gating, open set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import assert_error, make_settings
from tests.audio_factory import synth_voice, wav_bytes
from tests.paths import DEV_SPEECH_DIR, HAS_DEV_SPEECH

SR = 16_000


def voice(seconds: float = 2.0, seed: int = 1) -> np.ndarray:
    return synth_voice(seconds, seed=seed, f0=90.0 + 15 * seed).astype(np.float32)


def files(*clips: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("audio", (f"c{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)]


@pytest.fixture
def make_client(tmp_path: Path, tiny_model_dirs, tiny_registry: ModelRegistry):
    clients: list[TestClient] = []

    def factory(**overrides: object) -> TestClient:
        settings = make_settings(tmp_path / f"data{len(clients)}", tiny_model_dirs, **overrides)
        client = TestClient(create_app(settings, models=tiny_registry))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: np.clip(voice() * 4, -1, 1), "clipped"),
        (lambda: voice() * 0.05, "too_quiet"),
        (
            lambda: (
                voice() + np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32) * 0.15
            ),
            "low_snr",
        ),
        (lambda: voice(), "ok"),
    ],
)
def test_enrollment_reports_quality_codes(make_client, make, code: str) -> None:
    client = make_client()
    response = client.post(
        "/speakers", files=files(wav_bytes(make(), SR)), data={"external_id": "a"}
    )
    assert response.status_code == 201, response.text
    quality = response.json()["utterances"][0]["quality"]
    assert code in quality["codes"], quality
    assert quality["speech_s"] > 0.5 and quality["vad"] == "energy"
    # Warnings never block: the speaker is searchable.
    assert response.json()["searchable"] is True


def test_silence_is_rejected_with_no_speech(make_client) -> None:
    client = make_client()
    silent = wav_bytes(np.zeros(2 * SR, np.float32), SR)
    assert_error(client.post("/speakers", files=files(silent)), 422, "no_speech")
    assert_error(client.post("/find-match", files=files(silent)), 422, "no_speech")


def test_incomplete_enrollment_is_not_searchable_until_enough_speech(make_client) -> None:
    client = make_client(min_enroll_speech_s=2.0)  # a 2 s synthetic clip has ~1.2 s
    first = client.post(
        "/speakers", files=files(wav_bytes(voice(2.0), SR)), data={"external_id": "a"}
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["searchable"] is False and body["speaker"]["searchable"] is False
    assert body["speaker"]["spaces"] == []
    assert body["required_speech_seconds"] == 2.0
    assert 0 < body["speech_seconds"] < 2.0
    assert body["missing_speech_seconds"] == pytest.approx(2.0 - body["speech_seconds"], abs=1e-3)

    probe = client.post("/find-match", files=files(wav_bytes(voice(2.0), SR))).json()
    assert probe["best_match"] is None and probe["reason"] == "empty_gallery"
    assert client.get("/health").json()["spaces"]["voxceleb"]["indexed_speakers"] == 0

    more = client.post(
        "/speakers/a/utterances", files=files(wav_bytes(voice(2.0, seed=2) * 0.9, SR))
    )
    assert more.status_code == 201, more.text
    assert more.json()["searchable"] is True and more.json()["missing_speech_seconds"] == 0
    assert sorted(more.json()["speaker"]["spaces"]) == ["cnceleb", "voxceleb"]
    found = client.post("/find-match", files=files(wav_bytes(voice(2.0), SR))).json()
    assert found["best_match"]["id"] == "a"
    assert client.get("/speakers/a").json()["speaker"]["searchable"] is True


def test_probe_with_little_speech_still_gets_a_decision(make_client) -> None:
    """Issue 12: the 1.5 s "undecided" rule is gone; a short probe is warned about, and decided
    (only a probe with no detected speech is undecided: tests/test_decisions.py)."""
    client = make_client(min_probe_speech_s=3.0)
    clip = wav_bytes(voice(2.0), SR)
    assert client.post("/speakers", files=files(clip), data={"external_id": "a"}).status_code == 201
    body = client.post("/find-match", files=files(clip)).json()
    assert body["best_match"]["id"] == "a"
    assert body["best_match"]["similarity"] > 0.99
    assert body["best_match"]["is_match"] is True
    assert body["decision"] == "match" and body["reason"] is None
    assert 0 < body["quality"]["speech_s"] < 3.0
    assert "too_short" in body["quality"]["codes"]


def test_open_set_says_no_match_plainly(make_client) -> None:
    client = make_client()
    for i, ext in enumerate(("a", "b")):
        clip = wav_bytes(voice(2.0, seed=i + 1), SR)
        assert (
            client.post("/speakers", files=files(clip), data={"external_id": ext}).status_code
            == 201
        )
    stranger = wav_bytes(voice(2.0, seed=7), SR)
    body = client.post("/find-match", files=files(stranger), data={"top_n": "2"}).json()
    if body["best_match"]["similarity"] >= body["threshold"]:
        pytest.skip("tiny random model: stranger scored above the threshold")
    assert body["decision"] == "no_match" and body["reason"] == "below_threshold"
    assert body["match"] is None and body["best_match"]["is_match"] is False
    assert len(body["top_matches"]) == 2  # closest candidates still listed

    known = client.post("/find-match", files=files(wav_bytes(voice(2.0, seed=1), SR))).json()
    assert known["decision"] == "match" and known["match"]["id"] == "a"
    assert known["reason"] is None and known["threshold_source"] == "shipped"
    assert known["gallery_size"] == 2 and known["fpir_target"] == 0.03


@pytest.mark.skipif(not HAS_DEV_SPEECH, reason="dev-speech not available")
def test_product_defaults_with_silero_on_real_speech(make_client) -> None:
    """Silero VAD and the shipped minimums (10 s per speaker, 1.5 s per probe)."""
    client = make_client(vad="silero", min_enroll_speech_s=10.0, min_probe_speech_s=1.5)
    asr = DEV_SPEECH_DIR / "speechbrain_samples" / "ASR"
    clips = [(asr / f"spk1_snt{i}.wav").read_bytes() for i in range(1, 6)]
    body = client.post("/speakers", files=files(*clips[:3]), data={"external_id": "spk1"}).json()
    assert body["searchable"] is False and body["speech_seconds"] > 8.0
    assert all(u["quality"]["vad"] == "silero" for u in body["utterances"])
    body = client.post("/speakers/spk1/utterances", files=files(clips[3])).json()
    assert body["searchable"] is True and body["speech_seconds"] >= 10.0
    short = wav_bytes(np.zeros(SR // 2, np.float32), SR)
    assert_error(client.post("/find-match", files=files(short)), 422, "no_speech")
    found = client.post("/find-match", files=files(clips[4])).json()
    assert found["best_match"]["id"] == "spk1" and found["quality"]["codes"] == ["ok"]
