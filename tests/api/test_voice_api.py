"""Issue 2's endpoints over HTTP with tiny random models: health, extract, detect, compare,
stateless find-match, and every audio error case."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.decisions.cohort import shipped_cohort
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import assert_error, make_settings
from tests.audio_factory import encode_audio, synth_voice, wav_bytes


def upload(data: bytes, name: str = "clip.wav") -> dict:
    return {"audio": (name, data, "application/octet-stream")}


# --- health ----------------------------------------------------------------------------------
def test_health_reports_every_model(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "healthy"
    assert body["models_loaded"] is True
    assert set(body["models"]) == {"langid", "voxceleb", "cnceleb"}
    assert all(m["loaded"] and m["identity"] for m in body["models"].values())
    # Empty gallery, random test model: the shipped cosine tail at N = 0 (taken as 1).
    t1 = shipped_cohort("ecapa-voxceleb").tail("cosine").threshold(0.03, 1)
    assert body["spaces"]["voxceleb"]["threshold"] == pytest.approx(t1)


# --- extract-embedding -----------------------------------------------------------------------
def test_extract_embedding_detects_language_and_routes(client: TestClient, voice_wav) -> None:
    response = client.post("/extract-embedding", files=upload(voice_wav()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["embedding_size"] == 192 == len(body["embedding"])
    assert math.isclose(float(np.linalg.norm(body["embedding"])), 1.0, rel_tol=1e-4)
    # The tiny language-ID model is biased towards English: detected, routed to VoxCeleb.
    assert body["language"] == "en"
    assert body["language_source"] == "detected"
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["space"] == "voxceleb"


@pytest.mark.parametrize(
    ("language", "space"),
    [("zh", "cnceleb"), ("cmn", "cnceleb"), ("ja", "cnceleb"), ("fr", "voxceleb")],
)
def test_extract_embedding_with_caller_language(
    client: TestClient, voice_wav, language: str, space: str
) -> None:
    body = client.post(
        "/extract-embedding", files=upload(voice_wav()), data={"language": language}
    ).json()
    assert body["space"] == space
    assert body["language_source"] == "caller"
    assert body["confidence"] == 1.0


def test_spaces_give_different_embeddings(client: TestClient, voice_wav) -> None:
    clip = voice_wav()
    en = client.post("/extract-embedding", files=upload(clip), data={"language": "en"}).json()
    zh = client.post("/extract-embedding", files=upload(clip), data={"language": "zh"}).json()
    assert en["model"] != zh["model"]
    assert not np.allclose(en["embedding"], zh["embedding"])


def test_detected_chinese_routes_to_cnceleb(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], langid_zh_dir: Path, voice_wav
) -> None:
    dirs = {**tiny_model_dirs, "langid": langid_zh_dir}
    settings = make_settings(tmp_path / "data", dirs)
    with TestClient(create_app(settings)) as client:  # loads through ModelRegistry.load
        body = client.post("/extract-embedding", files=upload(voice_wav())).json()
        assert (body["language"], body["space"]) == ("zh", "cnceleb")
        detected = client.post("/detect-language", files=upload(voice_wav())).json()
        assert detected["language"] == "zh"
        assert detected["name"] == "Chinese"


@pytest.mark.parametrize("fmt", ["flac", "ogg", "opus", "mp3", "m4a", "webm"])
def test_extract_embedding_accepts_every_container(client: TestClient, fmt: str) -> None:
    samples = synth_voice(2.0, sample_rate=44_100)
    data = encode_audio(samples, 44_100, fmt, channels=2 if fmt != "opus" else 1)
    response = client.post("/extract-embedding", files=upload(data, f"clip.{fmt}"))
    assert response.status_code == 200, response.text
    assert response.json()["embedding_size"] == 192


# --- detect-language -------------------------------------------------------------------------
def test_detect_language(client: TestClient, voice_wav) -> None:
    body = client.post("/detect-language", files=upload(voice_wav())).json()
    assert body["success"] is True
    assert body["language"] == "en"
    assert body["name"] == "English"
    candidates = body["candidates"]
    assert candidates[0]["language"] == body["language"]
    confidences = [c["confidence"] for c in candidates]
    assert confidences == sorted(confidences, reverse=True)
    assert all(0.0 <= c <= 1.0 for c in confidences)


# --- audio errors ----------------------------------------------------------------------------
def test_empty_file(client: TestClient) -> None:
    assert_error(client.post("/extract-embedding", files=upload(b"")), 400, "empty_audio")


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(200),
        b"this is a text file, not audio\n" * 20,
        np.random.default_rng(0).bytes(5000),
    ],
    ids=["png", "text", "random-bytes"],
)
def test_not_audio(client: TestClient, data: bytes) -> None:
    assert_error(client.post("/extract-embedding", files=upload(data)), 415, "undecodable_audio")


def test_too_short(client: TestClient) -> None:
    data = wav_bytes(synth_voice(0.2), 16_000)
    assert_error(client.post("/extract-embedding", files=upload(data)), 422, "audio_too_short")


@pytest.mark.parametrize("samples", [np.zeros(32_000), np.full(32_000, 1e-6)], ids=["zero", "hiss"])
def test_silence_is_no_speech(client: TestClient, samples: np.ndarray) -> None:
    data = wav_bytes(samples.astype(np.float32), 16_000)
    assert_error(client.post("/extract-embedding", files=upload(data)), 422, "no_speech")


def test_limits_are_enforced(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], tiny_registry: ModelRegistry
) -> None:
    settings = make_settings(
        tmp_path / "data", tiny_model_dirs, max_upload_bytes=50_000, max_duration_s=1.0
    )
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        big = wav_bytes(synth_voice(3.0), 16_000)  # ~96 kB > 50 kB
        assert_error(client.post("/extract-embedding", files=upload(big)), 413, "payload_too_large")
        long_clip = encode_audio(synth_voice(3.0), 16_000, "mp3")  # small file, 3 s > 1 s
        assert len(long_clip) < 50_000
        assert_error(
            client.post("/extract-embedding", files=upload(long_clip)), 413, "audio_too_long"
        )


def test_missing_audio_field(client: TestClient) -> None:
    body = assert_error(
        client.post("/extract-embedding", data={"language": "en"}), 422, "validation_error"
    )
    assert "audio" in body["error"]["message"]


# --- compare-voices --------------------------------------------------------------------------
def test_compare_voices(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=192), rng.normal(size=192)
    same = client.post(
        "/compare-voices", json={"embedding1": a.tolist(), "embedding2": (a * 3).tolist()}
    )
    assert same.status_code == 200
    assert same.json()["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert same.json()["is_match"] is True
    other = client.post(
        "/compare-voices", json={"embedding1": a.tolist(), "embedding2": b.tolist()}
    ).json()
    expected = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert other["similarity"] == pytest.approx(expected, abs=1e-5)
    assert other["is_match"] is (expected >= other["threshold"])


@pytest.mark.parametrize(
    "body",
    [
        '{"embedding1": [1, 2, 3], "embedding2": [1, 2]}',
        '{"embedding1": [], "embedding2": []}',
        '{"embedding1": [1, NaN], "embedding2": [1, 2]}',
        '{"embedding1": [1, Infinity], "embedding2": [1, 2]}',
        '{"embedding1": [0, 0], "embedding2": [1, 2]}',
        '{"embedding1": "abc", "embedding2": [1, 2]}',
        '{"embedding1": [1, 2]}',
        '{"embedding1": [1, 2], "embedding2": [1, 2], "surprise": 1}',
        '{"embedding1": [1, 2], "embedding2": [1, 2], "space": "klingon"}',
        "not json",
    ],
)
def test_compare_voices_rejects_bad_embeddings(client: TestClient, body: str) -> None:
    response = client.post(
        "/compare-voices", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["success"] is False


# --- stateless find-match --------------------------------------------------------------------
def test_find_match_stateless(client: TestClient) -> None:
    rng = np.random.default_rng(2)
    stored = [
        {"id": f"s{i}", "embedding": rng.normal(size=192).tolist(), "metadata": {"i": i}}
        for i in range(10)
    ]
    probe = (np.array(stored[7]["embedding"]) + 0.01 * rng.normal(size=192)).tolist()
    body = client.post(
        "/find-match", json={"user_embedding": probe, "stored_embeddings": stored, "top_n": 3}
    ).json()
    assert body["success"] is True
    assert body["best_match"]["id"] == "s7"
    assert body["best_match"]["is_match"] is True
    assert body["best_match"]["metadata"] == {"i": 7}
    assert len(body["top_matches"]) == 3
    scores = [m["similarity"] for m in body["top_matches"]]
    assert scores == sorted(scores, reverse=True)


def test_find_match_stateless_errors(client: TestClient) -> None:
    bad_dims = {
        "user_embedding": [1.0, 2.0],
        "stored_embeddings": [{"id": "a", "embedding": [1.0]}],
    }
    assert_error(client.post("/find-match", json=bad_dims), 422, "validation_error")
    empty = client.post("/find-match", json={"user_embedding": [1.0, 2.0], "stored_embeddings": []})
    assert empty.status_code == 200
    assert empty.json()["best_match"] is None
    assert_error(
        client.post("/find-match", content=b"<xml/>", headers={"content-type": "text/xml"}),
        422,
        "validation_error",
    )
    too_many = {"user_embedding": [1.0], "stored_embeddings": [], "top_n": 10_000}
    assert_error(client.post("/find-match", json=too_many), 422, "validation_error")


def test_openapi_describes_every_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in [
        "/health",
        "/extract-embedding",
        "/detect-language",
        "/compare-voices",
        "/find-match",
    ]:
        assert path in spec["paths"], path
    find_match = spec["paths"]["/find-match"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(find_match)
    assert client.get("/docs").status_code == 200
    # every documented field has a description users can read
    props = spec["components"]["schemas"]["ExtractEmbeddingResponse"]["properties"]
    assert props["space"]["description"]


def test_unknown_route_uses_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/extract-embedding"), 405, "method_not_allowed")


# --- a missing model degrades, it does not take the service down ------------------------------
def test_missing_model_degrades_gracefully(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], voice_wav
) -> None:
    dirs = {**tiny_model_dirs, "cnceleb": tmp_path / "no-such-model"}
    settings = make_settings(tmp_path / "data", dirs)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert health["models_loaded"] is False
        assert health["models"]["cnceleb"]["loaded"] is False
        assert health["models"]["cnceleb"]["error"]
        assert health["models"]["voxceleb"]["loaded"] is True

        body = assert_error(
            client.post("/extract-embedding", files=upload(voice_wav()), data={"language": "zh"}),
            503,
            "model_unavailable",
        )
        assert "cnceleb" in body["error"]["message"]
        ok = client.post("/extract-embedding", files=upload(voice_wav()), data={"language": "en"})
        assert ok.status_code == 200
        assert client.post("/detect-language", files=upload(voice_wav())).status_code == 200


def test_missing_language_model_still_serves_given_languages(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], voice_wav
) -> None:
    dirs = {**tiny_model_dirs, "langid": tmp_path / "no-langid"}
    with TestClient(create_app(make_settings(tmp_path / "data", dirs))) as client:
        assert_error(
            client.post("/detect-language", files=upload(voice_wav())), 503, "model_unavailable"
        )
        assert_error(
            client.post("/extract-embedding", files=upload(voice_wav())), 503, "model_unavailable"
        )
        given = client.post(
            "/extract-embedding", files=upload(voice_wav()), data={"language": "de"}
        )
        assert given.status_code == 200
