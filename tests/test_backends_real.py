"""The ONNX backends against PyTorch with the real VoxCeleb ECAPA (skipped without ../shared).

Per clip, every dev-speech recording and its degraded versions (bench/conditions: short,
tel8k, noise10, mp3_32k): cosine to PyTorch's embedding ≥ 0.99999 for ``onnx``, ≥ 0.995 for
``onnx-int8``; ``voicesearch eval`` top-1 and EER unchanged within 0.1 point; exported outputs
pinned by fingerprints. The real model is exported once per session (~10-30 s).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bench.conditions.make_conditions import CONDITIONS
from service.core.settings import Settings
from service.evaluation import evaluate, trials
from service.pipeline.audio import decode_audio
from service.pipeline.backends import BACKENDS
from service.pipeline.registry import ModelRegistry
from tests.fingerprints import check_fingerprint
from tests.paths import DEV_SPEECH_DIR, REAL_VOXCELEB_DIR, REPO_ROOT, requires_real_model

# Slow: ~115 inputs on three backends plus two exports; minutes on a busy 2-core box.
pytestmark = [
    requires_real_model,
    pytest.mark.real_model,
    pytest.mark.slow,
    pytest.mark.timeout(1800),
]

MANIFEST = REPO_ROOT / "bench" / "manifests" / "dev-speech.csv"
MIN_COSINE = {"onnx": 0.99999, "onnx-int8": 0.995}


def _decode(data: bytes) -> np.ndarray:
    return decode_audio(data, max_duration_s=600, min_duration_s=0).samples


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-model-cache")


@pytest.fixture(scope="module")
def real_models(real_cache: Path) -> dict[str, ModelRegistry]:
    """The real model on every backend; the exports are built once, in this module's cache."""
    out = {}
    for backend in BACKENDS:
        out[backend] = ModelRegistry.load(
            {"voxceleb": str(REAL_VOXCELEB_DIR)},
            cache_dir=real_cache,
            device="cpu",
            inference=Settings(_env_file=None, backend=backend).inference(),  # type: ignore[arg-type]
        )
        assert out[backend].all_loaded, out[backend].statuses
    return out


@pytest.fixture(scope="module")
def inputs() -> list[tuple[str, np.ndarray]]:
    """Every dev clip, clean and under each degradation of bench/conditions."""
    out = []
    with open(MANIFEST, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for n, row in enumerate(rows):
        clean = _decode((DEV_SPEECH_DIR / row["path"]).read_bytes())
        for condition, degrade in CONDITIONS.items():
            samples = clean if condition == "clean" else _decode(degrade(clean, n)[0])
            out.append((f"{condition}/{row['path']}", samples))
    assert len(out) == 5 * len(rows) >= 100
    return out


@pytest.fixture(scope="module")
def torch_vectors(real_models: dict[str, ModelRegistry], inputs) -> np.ndarray:
    """PyTorch's raw ``encode_batch`` vector of every input, one clip per call."""
    runtime = real_models["torch"].encoder("voxceleb").runtime
    return np.vstack([runtime.forward([samples]) for _, samples in inputs]).astype(np.float64)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_every_clip_and_condition_matches_pytorch(
    backend: str, real_models: dict[str, ModelRegistry], inputs, torch_vectors: np.ndarray
) -> None:
    runtime = real_models[backend].encoder("voxceleb").runtime
    assert runtime.backend == backend
    got = np.vstack([runtime.forward([samples]) for _, samples in inputs]).astype(np.float64)
    cosines = np.sum(got * torch_vectors, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(torch_vectors, axis=1)
    )
    worst = int(np.argmin(cosines))
    by_condition = {
        condition: float(
            min(
                c
                for (name, _), c in zip(inputs, cosines, strict=True)
                if name.startswith(condition + "/")
            )
        )
        for condition in CONDITIONS
    }
    print(f"\n{backend}: worst cosine per condition {by_condition}")
    assert cosines[worst] >= MIN_COSINE[backend], (inputs[worst][0], cosines[worst], by_condition)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_eval_top1_and_eer_unchanged(
    backend: str, real_models: dict[str, ModelRegistry], tmp_path: Path
) -> None:
    """`voicesearch eval` on dev-speech: the service on this backend against SpeechBrain used
    directly (PyTorch): top-1 and EER within 0.1 point."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        model_voxceleb=str(REAL_VOXCELEB_DIR),
        backend=backend,  # type: ignore[arg-type]
    )
    rows = trials.read_manifest(MANIFEST, DEV_SPEECH_DIR)
    result = evaluate.evaluate(settings, real_models[backend], rows, MANIFEST)
    service, reference = result.service.metrics, result.reference.metrics
    assert abs(service["top1"] - reference["top1"]) <= 0.001, (service, reference)
    assert abs(service["eer"] - reference["eer"]) <= 0.001, (service, reference)
    assert service["top1"] == 1.0


def test_real_exports_do_not_drift(real_models: dict[str, ModelRegistry], inputs) -> None:
    """Fingerprints of the real model's exports (tests/fingerprints.py)."""
    probes = [samples for name, samples in inputs if name.startswith("clean/")][:3]
    for backend in ("onnx", "onnx-int8"):
        encoder = real_models[backend].encoder("voxceleb")
        vectors = [encoder.embed(samples) for samples in probes]
        check_fingerprint(f"real/{backend}", vectors, 0.999999 if backend == "onnx" else 0.9999)


def test_int8_identity_is_its_own(real_models: dict[str, ModelRegistry]) -> None:
    identities = {b: real_models[b].statuses["voxceleb"].identity for b in BACKENDS}
    assert identities["torch"] == identities["onnx"]
    assert identities["onnx-int8"].startswith(identities["torch"] + "+int8.")
