"""Every endpoint over HTTP with the real VoxCeleb ECAPA model and real recordings.

Skipped when ../shared (the model and dev-speech) is absent. Language ID and CN-Celeb stay tiny
random models: no real weights exist for them here, and these tests pass `language` anyway.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.pipeline.audio import decode_audio
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import make_settings
from tests.audio_factory import encode_audio, wav_bytes
from tests.paths import DEV_SPEECH_DIR, REAL_VOXCELEB_DIR, requires_real_model

pytestmark = requires_real_model

ASR_DIR = DEV_SPEECH_DIR / "speechbrain_samples" / "ASR"
RTVC_DIR = DEV_SPEECH_DIR / "rtvc_samples"


@pytest.fixture
def real_client(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], real_registry: ModelRegistry
) -> Iterator[TestClient]:
    dirs = {**tiny_model_dirs, "voxceleb": REAL_VOXCELEB_DIR}
    with TestClient(create_app(make_settings(tmp_path / "data", dirs), models=real_registry)) as c:
        yield c


def asr(speaker: str, n: int) -> bytes:
    return (ASR_DIR / f"{speaker}_snt{n}.wav").read_bytes()


def rtvc_halves(path: Path) -> tuple[bytes, bytes]:
    """One ~5 s clip per speaker: enroll on the first half, probe with the second."""
    samples = decode_audio(path.read_bytes(), max_duration_s=60, min_duration_s=0).samples
    middle = samples.shape[0] // 2
    return wav_bytes(samples[:middle], 16_000), wav_bytes(samples[middle:], 16_000)


def post_audio(client: TestClient, path: str, data: bytes, **form: str) -> dict:
    response = client.post(
        path, files={"audio": ("clip", data, "application/octet-stream")}, data=form
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_every_probe_finds_its_speaker_first(real_client: TestClient) -> None:
    probes: list[tuple[str, bytes]] = []
    for speaker in ("spk1", "spk2"):
        enrolled = real_client.post(
            "/speakers",
            files=[("audio", (f"{n}.wav", asr(speaker, n), "audio/wav")) for n in (1, 2, 3)],
            data={"external_id": speaker, "language": "en"},
        )
        assert enrolled.status_code == 201, enrolled.text
        probes += [(speaker, asr(speaker, n)) for n in (4, 5, 6)]
    with open(RTVC_DIR / "metadata.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            enroll_half, probe_half = rtvc_halves(RTVC_DIR / row["path"])
            enrolled = real_client.post(
                "/speakers",
                files=[("audio", ("a.wav", enroll_half, "audio/wav"))],
                data={"external_id": row["speaker"], "language": "en"},
            )
            assert enrolled.status_code == 201, enrolled.text
            probes.append((row["speaker"], probe_half))

    assert len(probes) == 12
    for speaker, data in probes:
        body = post_audio(real_client, "/find-match", data, language="en", top_n="3")
        assert body["space"] == "voxceleb"
        assert body["best_match"]["id"] == speaker, (speaker, body["top_matches"])
        assert len(body["top_matches"]) == 3


def test_extract_and_compare_with_the_real_model(real_client: TestClient) -> None:
    a1 = post_audio(real_client, "/extract-embedding", asr("spk1", 1), language="en")
    assert a1["embedding_size"] == 192
    assert a1["model"].startswith("speechbrain/spkrec-ecapa-voxceleb@sha256:")
    assert np.linalg.norm(a1["embedding"]) == pytest.approx(1.0, abs=1e-4)
    a2 = post_audio(real_client, "/extract-embedding", asr("spk1", 2), language="en")
    b1 = post_audio(real_client, "/extract-embedding", asr("spk2", 1), language="en")

    same = real_client.post(
        "/compare-voices", json={"embedding1": a1["embedding"], "embedding2": a2["embedding"]}
    ).json()
    different = real_client.post(
        "/compare-voices", json={"embedding1": a1["embedding"], "embedding2": b1["embedding"]}
    ).json()
    assert same["similarity"] > different["similarity"] + 0.2
    assert same["is_match"] is True

    stateless = real_client.post(
        "/find-match",
        json={
            "user_embedding": a2["embedding"],
            "stored_embeddings": [
                {"id": "spk1", "embedding": a1["embedding"]},
                {"id": "spk2", "embedding": b1["embedding"]},
            ],
        },
    ).json()
    assert stateless["best_match"]["id"] == "spk1"


def test_a_compressed_upload_matches_its_wav(real_client: TestClient) -> None:
    samples = decode_audio(asr("spk2", 3), max_duration_s=60, min_duration_s=0).samples
    wav = post_audio(real_client, "/extract-embedding", wav_bytes(samples, 16_000), language="en")
    for fmt in ("opus", "m4a", "webm"):
        data = encode_audio(samples, 16_000, fmt, bitrate=64_000)
        other = post_audio(real_client, "/extract-embedding", data, language="en")
        cosine = float(np.dot(wav["embedding"], other["embedding"]))
        assert cosine >= 0.95, (fmt, cosine)


def test_health_and_detect_language_with_real_model_loaded(real_client: TestClient) -> None:
    health = real_client.get("/health").json()
    assert health["status"] == "healthy"
    assert health["models"]["voxceleb"]["source"] == str(REAL_VOXCELEB_DIR)
    detected = post_audio(real_client, "/detect-language", asr("spk1", 1))
    assert detected["candidates"]


def _telephone_quiet(samples: np.ndarray) -> bytes:
    """-30 dB, 300-3400 Hz, uploaded as an 8 kHz WAV."""
    from scipy import signal

    sos = signal.butter(6, [300, 3400], btype="bandpass", fs=16_000, output="sos")
    narrow = signal.resample_poly(signal.sosfilt(sos, samples * 10 ** (-30 / 20)), 1, 2)
    return wav_bytes(narrow.astype(np.float32), 8_000)


def test_the_service_embeds_exactly_what_speechbrain_direct_does(
    tmp_path: Path,
    tiny_model_dirs: dict[str, Path],
    real_registry: ModelRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Issue 12: no trimming. The embedding /extract-embedding returns (Silero VAD on) equals
    SpeechBrain's EncoderClassifier.encode_batch on the same decoded samples, also for clips
    the old trimming changed (silence around the speech, quiet telephone band)."""
    import torch
    from speechbrain.inference.speaker import EncoderClassifier

    direct = EncoderClassifier.from_hparams(
        source=str(REAL_VOXCELEB_DIR),
        savedir=str(tmp_path_factory.mktemp("ecapa-direct")),
        overrides={"pretrained_path": str(REAL_VOXCELEB_DIR)},
        run_opts={"device": "cpu"},
    )
    assert direct is not None
    clip = decode_audio(asr("spk1", 4), max_duration_s=60, min_duration_s=0).samples
    silence = np.zeros(16_000, np.float32)
    uploads = {
        "padded with 1 s of silence": wav_bytes(np.concatenate([silence, clip, silence]), 16_000),
        "quiet telephone band": _telephone_quiet(clip),
    }
    dirs = {**tiny_model_dirs, "voxceleb": REAL_VOXCELEB_DIR}
    settings = make_settings(tmp_path / "data", dirs, vad="silero")
    with TestClient(create_app(settings, models=real_registry)) as client:
        for name, data in uploads.items():
            body = post_audio(client, "/extract-embedding", data, language="en")
            served = np.asarray(body["embedding"], dtype=np.float64)
            samples = decode_audio(data, max_duration_s=60, min_duration_s=0).samples
            with torch.no_grad():
                want = direct.encode_batch(torch.from_numpy(samples)[None]).reshape(-1)
            want = want.double().numpy()
            cosine = float(served @ want / np.linalg.norm(served) / np.linalg.norm(want))
            assert cosine >= 0.9999, (name, cosine)
