"""The real VoxCeleb ECAPA model on real recordings (skipped where ../shared is absent)."""

from __future__ import annotations

import itertools
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from service.core.settings import SPACE_VOXCELEB
from service.pipeline.registry import ModelRegistry
from tests.paths import DEV_SPEECH_DIR, REAL_VOXCELEB_DIR, requires_real_model

pytestmark = [requires_real_model, pytest.mark.real_model]


def _read_mp3(path: Path) -> np.ndarray:
    try:
        from service.pipeline.audio import decode_audio
    except ImportError:  # pragma: no cover - service/pipeline/audio.py is optional for this test
        return _read_with_pyav(path)
    return decode_audio(path.read_bytes(), max_duration_s=300.0, min_duration_s=0.1).samples


def _read_with_pyav(path: Path) -> np.ndarray:  # pragma: no cover - fallback only
    import av
    import torchaudio

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        frames = [f.to_ndarray().astype(np.float32) for f in container.decode(stream)]
    data = np.concatenate([f if f.ndim == 1 else f.reshape(-1, f.shape[-1]) for f in frames], -1)
    mono = torch.from_numpy(data.reshape(-1, data.shape[-1]).mean(0))
    return torchaudio.functional.resample(mono, rate, 16_000).numpy()


@pytest.fixture(scope="module")
def clips() -> dict[str, tuple[str, np.ndarray]]:
    """name → (speaker, 16 kHz mono float32): 2 speakers × 6 wavs, 6 speakers × 1 mp3."""
    found: dict[str, tuple[str, np.ndarray]] = {}
    for path in sorted((DEV_SPEECH_DIR / "speechbrain_samples" / "ASR").glob("*.wav")):
        samples, rate = sf.read(path, dtype="float32", always_2d=False)
        assert rate == 16_000 and samples.ndim == 1
        found[path.stem] = (path.stem.split("_")[0], samples)
    for path in sorted((DEV_SPEECH_DIR / "rtvc_samples").glob("*.mp3")):
        found[path.stem] = (path.stem.split("_")[0], _read_mp3(path))
    speakers = [speaker for speaker, _ in found.values()]
    assert speakers.count("spk1") == 6 and speakers.count("spk2") == 6
    assert len(set(speakers)) == 8
    return found


@pytest.fixture(scope="module")
def real_registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """Loaded with every network call refused: a local directory must never touch the hub."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        started = time.perf_counter()
        registry = ModelRegistry.load(
            {SPACE_VOXCELEB: str(REAL_VOXCELEB_DIR)},
            cache_dir=tmp_path_factory.mktemp("real-cache"),
            device="cpu",
        )
        print(f"\nreal VoxCeleb ECAPA loaded in {time.perf_counter() - started:.2f}s")
    assert registry.all_loaded, registry.statuses
    return registry


def test_real_model_loads_offline(real_registry: ModelRegistry) -> None:
    status = real_registry.statuses[SPACE_VOXCELEB]
    assert status.identity is not None
    assert status.identity.startswith("speechbrain/spkrec-ecapa-voxceleb@sha256:")
    assert real_registry.encoder(SPACE_VOXCELEB).dim == 192


def test_same_speaker_pairs_beat_every_different_speaker_pair(
    real_registry: ModelRegistry, clips: dict[str, tuple[str, np.ndarray]]
) -> None:
    encoder = real_registry.encoder(SPACE_VOXCELEB)
    vectors = {name: encoder.embed(samples) for name, (_, samples) in clips.items()}
    for vector in vectors.values():
        assert vector.shape == (192,) and vector.dtype == np.float32
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)

    same: list[tuple[float, str, str]] = []
    different: list[tuple[float, str, str]] = []
    for a, b in itertools.combinations(sorted(vectors), 2):
        score = float(vectors[a] @ vectors[b])
        (same if clips[a][0] == clips[b][0] else different).append((score, a, b))
    worst_same, best_different = min(same), max(different)
    print(
        f"\nsame-speaker pairs: {len(same)}, min cosine {worst_same[0]:.3f} {worst_same[1:]}"
        f"\ndifferent-speaker pairs: {len(different)}, max cosine {best_different[0]:.3f} "
        f"{best_different[1:]}"
    )
    assert worst_same[0] > best_different[0]


def test_embed_equals_speechbrain_encode_batch(
    real_registry: ModelRegistry, clips: dict[str, tuple[str, np.ndarray]]
) -> None:
    encoder = real_registry.encoder(SPACE_VOXCELEB)
    for name in ("spk1_snt1", "spk2_snt3", "1320_00000", "p240_00000"):
        samples = clips[name][1]
        with torch.no_grad():
            reference = encoder.classifier.encode_batch(torch.from_numpy(samples).unsqueeze(0))
        reference = reference.squeeze().numpy()
        ours = encoder.embed(samples)
        cosine = float(ours @ reference / np.linalg.norm(reference))
        assert cosine >= 0.999, (name, cosine)
