"""Where the optional real-model assets live, and the marker that skips tests without them.

``../shared`` (beside the checkout) holds the real VoxCeleb ECAPA model and a few real recordings.
A user's machine does not have it, so tests that need it skip cleanly; ``.ci/run`` points
``VOICESEARCH_TEST_SHARED`` at it when present.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
SHARED_DIR = Path(os.environ.get("VOICESEARCH_TEST_SHARED", REPO_ROOT.parent / "shared"))
REAL_VOXCELEB_DIR = SHARED_DIR / "models" / "spkrec-ecapa-voxceleb"
DEV_SPEECH_DIR = SHARED_DIR / "data" / "dev-speech"

HAS_REAL_MODEL = (REAL_VOXCELEB_DIR / "embedding_model.ckpt").is_file()
HAS_DEV_SPEECH = (DEV_SPEECH_DIR / "speechbrain_samples" / "metadata.csv").is_file()

requires_real_model = pytest.mark.skipif(
    not (HAS_REAL_MODEL and HAS_DEV_SPEECH),
    reason=f"real VoxCeleb model / dev-speech not found under {SHARED_DIR}",
)
