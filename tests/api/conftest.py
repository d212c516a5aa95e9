"""An app wired to tiny random models and a fresh data directory, driven over HTTP (ASGI)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.core.settings import Settings
from service.pipeline.registry import ModelRegistry
from tests.audio_factory import synth_voice, wav_bytes


def make_settings(data_dir: Path, model_dirs: dict[str, Path], **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "model_langid": str(model_dirs["langid"]),
        "model_voxceleb": str(model_dirs["voxceleb"]),
        "model_cnceleb": str(model_dirs["cnceleb"]),
        "model_cache_dir": data_dir.parent / "model-cache",
        # Synthetic test voices are 1-2 s and not speech to a real VAD: the product defaults
        # (Silero VAD, 1 s per speaker, 1.5 s per probe) are tested in test_quality_api.py.
        "vad": "energy",
        "min_enroll_speech_s": 0.0,
        "min_probe_speech_s": 0.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> Settings:
    return make_settings(tmp_path / "data", tiny_model_dirs)


@pytest.fixture
def client(settings: Settings, tiny_registry: ModelRegistry) -> Iterator[TestClient]:
    with TestClient(create_app(settings, models=tiny_registry)) as test_client:
        yield test_client


@pytest.fixture
def voice_wav() -> Callable[..., bytes]:
    """A speech-like WAV clip; different seeds/pitches give different "voices"."""

    def make(duration_s: float = 2.0, *, seed: int = 0, f0: float = 120.0) -> bytes:
        return wav_bytes(synth_voice(duration_s, seed=seed, f0=f0), 16_000)

    return make


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body
