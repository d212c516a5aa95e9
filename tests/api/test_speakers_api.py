"""Issue 3 over HTTP with tiny random models: enroll → search → update → delete, idempotency,
atomic failures, persistence across restarts, and index-backed find-match modes.

Every test runs on SQLite and on PostgreSQL (``database_url``, ``tests/conftest.py``), each with
the FAISS gallery and with Milvus (``vector_store``: a Milvus Lite server process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.core.settings import Settings
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import assert_error, make_settings
from tests.audio_factory import synth_voice, wav_bytes


@pytest.fixture
def settings(
    tmp_path: Path,
    tiny_model_dirs: dict[str, Path],
    database_url: str,
    vector_store: dict[str, str],
) -> Settings:
    return make_settings(
        tmp_path / "data", tiny_model_dirs, database_url=database_url, **vector_store
    )


def clip(seed: int, duration_s: float = 2.0) -> bytes:
    return wav_bytes(synth_voice(duration_s, seed=seed, f0=90.0 + 15 * seed), 16_000)


def files(*clips: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("audio", (f"c{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)]


def enroll(client: TestClient, external_id: str, *clips: bytes, **form: str):
    return client.post("/speakers", files=files(*clips), data={"external_id": external_id, **form})


def search_audio(client: TestClient, data: bytes, **form: str) -> dict:
    response = client.post("/find-match", files=files(data), data=form)
    assert response.status_code == 200, response.text
    return response.json()


def test_enroll_search_update_delete_round_trip(client: TestClient) -> None:
    response = enroll(client, "alice", clip(1), name="Alice", metadata='{"team": "red"}')
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["speaker"]["id"] == "alice"
    assert body["speaker"]["name"] == "Alice"
    assert body["speaker"]["metadata"] == {"team": "red"}
    assert sorted(body["speaker"]["spaces"]) == ["cnceleb", "voxceleb"]
    (utterance,) = body["utterances"]
    assert utterance["language"] == "en"
    assert 0.0 <= utterance["confidence"] <= 1.0
    assert utterance["duration_s"] == pytest.approx(2.0, abs=0.05)
    assert sorted(utterance["spaces"]) == ["cnceleb", "voxceleb"]
    assert enroll(client, "bob", clip(2), name="Bob").status_code == 201

    found = search_audio(client, clip(1), top_n="2")
    assert found["space"] == "voxceleb"
    assert found["language"] == "en"
    assert found["best_match"]["id"] == "alice"
    assert found["best_match"]["name"] == "Alice"
    assert found["best_match"]["metadata"] == {"team": "red"}
    assert found["best_match"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert found["best_match"]["is_match"] is True
    assert [m["id"] for m in found["top_matches"]] == ["alice", "bob"]

    patched = client.patch(
        "/speakers/alice", json={"name": "Alice B.", "metadata": {"team": "blue"}}
    )
    assert patched.status_code == 200
    assert patched.json()["speaker"]["name"] == "Alice B."
    assert search_audio(client, clip(1))["best_match"]["metadata"] == {"team": "blue"}

    deleted = client.delete("/speakers/alice")
    assert deleted.status_code == 200
    assert deleted.json() == {"success": True, "id": "alice", "deleted": True}
    assert_error(client.get("/speakers/alice"), 404, "speaker_not_found")
    after = search_audio(client, clip(1), top_n="5")
    assert [m["id"] for m in after["top_matches"]] == ["bob"]
    assert_error(client.delete("/speakers/alice"), 404, "speaker_not_found")


def test_a_chinese_enrollment_is_found_by_an_english_probe(client: TestClient) -> None:
    # Enrolled as Chinese, embedded in every space: an English probe (VoxCeleb space) finds it.
    assert enroll(client, "li", clip(3), language="zh").json()["utterances"][0]["language"] == "zh"
    found = search_audio(client, clip(3), language="en")
    assert (found["space"], found["best_match"]["id"]) == ("voxceleb", "li")
    found = search_audio(client, clip(3), language="zh")
    assert (found["space"], found["best_match"]["id"]) == ("cnceleb", "li")


def test_find_match_by_embedding_searches_the_index(client: TestClient) -> None:
    enroll(client, "carol", clip(4))
    enroll(client, "dave", clip(5))
    emb = client.post("/extract-embedding", files=files(clip(4)), data={"language": "ko"}).json()
    assert emb["space"] == "cnceleb"
    body = client.post(
        "/find-match", json={"user_embedding": emb["embedding"], "space": "cnceleb", "top_n": 1}
    ).json()
    assert body["best_match"]["id"] == "carol"
    assert len(body["top_matches"]) == 1
    by_language = client.post(
        "/find-match", json={"user_embedding": emb["embedding"], "language": "ko"}
    ).json()
    assert by_language["space"] == "cnceleb"
    assert by_language["best_match"]["id"] == "carol"
    wrong_dim = client.post("/find-match", json={"user_embedding": [0.1] * 10, "space": "voxceleb"})
    assert_error(wrong_dim, 422, "validation_error")
    unknown = client.post("/find-match", json={"user_embedding": [0.1] * 192, "space": "martian"})
    assert_error(unknown, 422, "unknown_space")


def test_empty_index_is_not_an_error(client: TestClient) -> None:
    body = search_audio(client, clip(1))
    assert body["best_match"] is None
    assert body["top_matches"] == []
    assert body["searched"] == 0


def test_duplicate_and_unknown_ids(client: TestClient) -> None:
    assert enroll(client, "erin", clip(6)).status_code == 201
    assert_error(enroll(client, "erin", clip(7)), 409, "duplicate_external_id")
    assert_error(client.get("/speakers/nobody"), 404, "speaker_not_found")
    assert_error(client.patch("/speakers/nobody", json={"name": "x"}), 404, "speaker_not_found")
    assert_error(
        client.post("/speakers/nobody/utterances", files=files(clip(1))), 404, "speaker_not_found"
    )


def test_generated_external_id(client: TestClient) -> None:
    body = client.post("/speakers", files=files(clip(8))).json()
    assert body["speaker"]["id"]
    assert client.get(f"/speakers/{body['speaker']['id']}").status_code == 200


def test_same_clip_twice_is_idempotent(client: TestClient) -> None:
    enroll(client, "frank", clip(9))
    again = client.post("/speakers/frank/utterances", files=files(clip(9)))
    assert again.status_code == 201
    assert again.json()["utterances"][0]["created"] is False
    assert again.json()["speaker"]["utterance_count"] == 1
    more = client.post("/speakers/frank/utterances", files=files(clip(10)))
    assert more.json()["utterances"][0]["created"] is True
    assert more.json()["speaker"]["utterance_count"] == 2


def test_a_bad_file_stores_nothing(client: TestClient) -> None:
    bad = b"definitely not audio" * 50
    response = enroll(client, "grace", clip(11), bad)
    body = assert_error(response, 415, "undecodable_audio")
    assert body["error"]["details"]["file_index"] == 1
    assert_error(client.get("/speakers/grace"), 404, "speaker_not_found")
    assert client.get("/speakers").json()["total"] == 0

    enroll(client, "grace", clip(11))
    silent = wav_bytes(np.zeros(32_000, dtype=np.float32), 16_000)
    assert_error(
        client.post("/speakers/grace/utterances", files=files(clip(12), silent)), 422, "no_speech"
    )
    assert client.get("/speakers/grace").json()["speaker"]["utterance_count"] == 1


def test_bad_enrollment_forms(client: TestClient) -> None:
    assert_error(enroll(client, "h", clip(1), metadata="{not json"), 422, "validation_error")
    assert_error(enroll(client, "h", clip(1), metadata="[1, 2]"), 422, "validation_error")
    assert_error(client.post("/speakers", data={"external_id": "h"}), 422, "validation_error")
    assert_error(client.post("/speakers", files=files(b"")), 400, "empty_audio")
    assert client.get("/speakers").json()["total"] == 0


def test_list_paginates_and_filters(client: TestClient) -> None:
    for i in range(5):
        enroll(
            client, f"p{i}", clip(20 + i), name=f"Person {i}", metadata=f'{{"group": "{i % 2}"}}'
        )
    page = client.get("/speakers", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5
    assert len(page["speakers"]) == 2
    everyone = client.get("/speakers", params={"limit": 100}).json()["speakers"]
    assert sorted(s["id"] for s in everyone) == [f"p{i}" for i in range(5)]
    named = client.get("/speakers", params={"name": "person 3"}).json()
    assert [s["id"] for s in named["speakers"]] == ["p3"]
    group = client.get("/speakers", params={"metadata": '{"group": "1"}'}).json()
    assert sorted(s["id"] for s in group["speakers"]) == ["p1", "p3"]
    assert_error(client.get("/speakers", params={"limit": 0}), 422, "validation_error")


def test_everything_survives_a_restart(settings: Settings, tiny_registry: ModelRegistry) -> None:
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        for i in range(3):
            enroll(client, f"r{i}", clip(30 + i))
        client.delete("/speakers/r1")
        before = search_audio(client, clip(30), top_n="5")
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        after = search_audio(client, clip(30), top_n="5")
        assert after["top_matches"] == before["top_matches"]
        assert [m["id"] for m in after["top_matches"]] == ["r0", "r2"]
        assert client.get("/health").json()["spaces"]["voxceleb"]["indexed_speakers"] == 2
