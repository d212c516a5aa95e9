"""Stored fingerprints of exported models' outputs (tests/fixtures/export_fingerprints.json).

An exported model whose outputs move — a new exporter, INT8 recipe, ONNX Runtime or calibration
audio — fails :func:`check_fingerprint`. If the change is intended: bump ``EXPORTER_VERSION``
(service/pipeline/backends/export_cache.py), so that INT8 identities change with the vectors and
stored INT8 profiles are not silently mixed with new ones, then regenerate the fingerprints:
``VOICESEARCH_UPDATE_FINGERPRINTS=1 pytest tests/test_backends.py tests/test_backends_real.py``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from service.pipeline.backends.export_cache import EXPORTER_VERSION
from tests.paths import FIXTURES_DIR

FINGERPRINTS = FIXTURES_DIR / "export_fingerprints.json"


def check_fingerprint(entry: str, vectors: list[np.ndarray], min_cosine: float) -> None:
    """Every vector's cosine to its stored fingerprint is at least ``min_cosine``."""
    stored = json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.is_file() else {}
    if os.environ.get("VOICESEARCH_UPDATE_FINGERPRINTS"):
        stored[entry] = {
            "exporter_version": EXPORTER_VERSION,
            "vectors": [[round(float(v), 6) for v in vector] for vector in vectors],
        }
        body = ",\n".join(
            f" {json.dumps(key)}: {json.dumps(stored[key])}" for key in sorted(stored)
        )
        FINGERPRINTS.write_text("{\n" + body + "\n}\n")
    assert entry in stored, f"no fingerprint {entry!r}: see tests/fingerprints.py"
    expected = stored[entry]
    assert expected["exporter_version"] == EXPORTER_VERSION, "regenerate: see tests/fingerprints.py"
    for vector, reference in zip(vectors, expected["vectors"], strict=True):
        reference = np.asarray(reference, dtype=np.float64)
        cosine = float(
            np.dot(vector, reference) / np.linalg.norm(vector) / np.linalg.norm(reference)
        )
        assert cosine >= min_cosine, f"{entry} drifted: cosine {cosine:.7f} (tests/fingerprints.py)"
