"""Shared model fixtures: tiny random SpeechBrain models in the official layout (see
``tests/model_factory.py``), loaded once per session through the service's own loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.models import ModelRegistry
from tests.model_factory import build_langid_model, build_speaker_model


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """role → model directory: language ID favouring English, and both speaker encoders.

    Each ``hyperparams.yaml`` names its hub repo (``pretrained_path``), like the real ones.
    """
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "langid": build_langid_model(root / "langid", seed=0, favour_language="en"),
        "voxceleb": build_speaker_model(root / "voxceleb", seed=0),
        "cnceleb": build_speaker_model(
            root / "cnceleb", seed=1, hub_name="LanceaKing/spkrec-ecapa-cnceleb"
        ),
    }


@pytest.fixture(scope="session")
def tiny_registry(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> ModelRegistry:
    registry = ModelRegistry.load(
        {role: str(path) for role, path in tiny_model_dirs.items()},
        cache_dir=tmp_path_factory.mktemp("model-cache"),
        device="cpu",
    )
    assert registry.all_loaded, registry.statuses
    return registry


@pytest.fixture(scope="session")
def langid_zh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny language-ID model that detects Chinese ("zh") on any input."""
    return build_langid_model(tmp_path_factory.mktemp("langid-zh"), favour_language="zh")
