"""What a new user meets in the first hour over HTTP: models switched off, /health telling the
truth, offline docs, and response fields that say what they mean."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import assert_error, make_settings
from tests.audio_factory import synth_voice, wav_bytes


def _client(tmp_path: Path, model_dirs: dict[str, Path], **overrides: object) -> TestClient:
    settings = make_settings(tmp_path / "data", model_dirs, **overrides)
    return TestClient(create_app(settings))


def test_switched_off_models_do_not_degrade_health_and_routing_needs_no_language(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    with _client(tmp_path, tiny_model_dirs, model_langid="off", model_cnceleb="off") as client:
        health = client.get("/health").json()
        assert health["status"] == "healthy" and health["models_loaded"] is True
        assert health["loaded_models"] == ["voxceleb"]
        assert health["models"]["langid"]["enabled"] is False
        assert health["models"]["langid"]["error"] is None
        assert health["models"]["cnceleb"]["enabled"] is False
        assert "cnceleb" not in [r for r, m in health["models"].items() if m["loaded"]]

        clip = wav_bytes(synth_voice(2.0, seed=3), 16_000)
        enrolled = client.post("/speakers", files={"audio": ("a.wav", clip)}, data={"name": "a"})
        assert enrolled.status_code == 201, enrolled.text
        # No language given, no language-ID model, one space: no detection, no error.
        found = client.post("/find-match", files={"audio": ("p.wav", clip)})
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["space"] == "voxceleb" and body["language"] is None
        assert body["best_match"]["name"] == "a"
        # A Chinese clip goes to the one space there is, not to a switched-off one.
        zh = client.post("/find-match", files={"audio": ("p.wav", clip)}, data={"language": "zh"})
        assert zh.status_code == 200 and zh.json()["space"] == "voxceleb"

        detect = client.post("/detect-language", files={"audio": ("p.wav", clip)})
        error = assert_error(detect, 503, "model_unavailable")["error"]
        assert "switched off" in error["message"]
        assert "pass" not in error["message"]  # this endpoint has no language to pass


def test_language_is_required_when_language_id_is_off_and_two_spaces_are_on(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    with _client(tmp_path, tiny_model_dirs, model_langid="off") as client:
        clip = wav_bytes(synth_voice(2.0, seed=4), 16_000)
        response = client.post("/extract-embedding", files={"audio": ("p.wav", clip)})
        assert_error(response, 422, "language_required")
        given = client.post(
            "/extract-embedding", files={"audio": ("p.wav", clip)}, data={"language": "ja"}
        )
        assert given.status_code == 200 and given.json()["space"] == "cnceleb"


def test_health_shows_the_kind_of_a_load_failure(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    models = {**tiny_model_dirs, "cnceleb": tmp_path / "missing-model"}
    with _client(tmp_path, models) as client:
        health = client.get("/health").json()
    assert health["status"] == "degraded" and health["models_loaded"] is False
    assert set(health["loaded_models"]) == {"langid", "voxceleb"}
    failed = health["models"]["cnceleb"]
    assert failed["enabled"] is True and failed["loaded"] is False
    assert failed["error_kind"] == "files_missing" and "does not exist" in failed["error"]


def test_docs_pages_load_nothing_from_the_internet(client: TestClient) -> None:
    for page, assets in (
        ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
        ("/redoc", ("redoc.standalone.js",)),
    ):
        html = client.get(page)
        assert html.status_code == 200
        assert "http://" not in html.text and "https://" not in html.text, page
        for asset in assets:
            assert f"/docs-assets/{asset}" in html.text
            served = client.get(f"/docs-assets/{asset}")
            assert served.status_code == 200 and len(served.content) > 10_000
    assert client.get("/openapi.json").status_code == 200


def test_fields_say_what_they_mean(client: TestClient, voice_wav: Callable[..., bytes]) -> None:
    clip = voice_wav(2.0, seed=11)
    created = client.post(
        "/speakers", files={"audio": ("a.wav", clip)}, data={"external_id": "ann"}
    )
    assert created.status_code == 201, created.text
    required = created.json()["required_speech_seconds"]

    # required_speech_seconds is the same number in every speaker response.
    assert client.get("/speakers/ann").json()["speaker"]["required_speech_seconds"] == required
    listed = client.get("/speakers").json()["speakers"][0]
    assert listed["required_speech_seconds"] == required
    patched = client.patch("/speakers/ann", json={"name": "Ann"}).json()["speaker"]
    assert patched["required_speech_seconds"] == required

    # find-match: the language's confidence is called so; `confidence` stays for old clients.
    found = client.post("/find-match", files={"audio": ("p.wav", clip)}).json()
    assert found["language_confidence"] == found["confidence"]
    assert 0.0 <= found["language_confidence"] <= 1.0

    # One clip, one duration: the decoded clip's, in every response (silence included).
    padded = np.concatenate([np.zeros(8_000, np.float32), synth_voice(2.0, seed=12)])
    data = wav_bytes(padded, 16_000)
    extracted = client.post("/extract-embedding", files={"audio": ("p.wav", data)}).json()
    detected = client.post("/detect-language", files={"audio": ("p.wav", data)}).json()
    searched = client.post("/find-match", files={"audio": ("p.wav", data)}).json()
    assert extracted["duration_s"] == detected["duration_s"] == 2.5
    assert searched["quality"]["duration_s"] == 2.5
    assert extracted["language_confidence"] == extracted["confidence"]


def test_registry_counts_only_switched_on_models(tmp_path: Path, tiny_model_dirs: dict) -> None:
    registry = ModelRegistry.load(
        {"langid": "OFF", "voxceleb": str(tiny_model_dirs["voxceleb"]), "cnceleb": "off"},
        cache_dir=tmp_path,
    )
    assert registry.all_loaded and registry.enabled_spaces() == ["voxceleb"]
    assert list(registry.statuses) == ["langid", "voxceleb", "cnceleb"]
    assert not registry.statuses["langid"].enabled and registry.statuses["langid"].error is None
