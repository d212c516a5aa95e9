"""`POST /identify-speakers` over HTTP with tiny random models: the plumbing (shape, timeline
against the silences, naming through the find-match decision, RTTM, every bad input). What the
real model finds in a real conversation is tested in test_identify_real_model.py."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import assert_error, make_settings
from tests.audio_factory import synth_voice, wav_bytes

SR = 16_000


def conversation() -> tuple[bytes, list[tuple[float, float]]]:
    """Voice A 4 s, 1 s silence, voice B 4 s, 1 s silence, voice A 3 s; and the speech spans."""
    a1 = synth_voice(4.0, seed=1, f0=110.0)
    b = synth_voice(4.0, seed=2, f0=230.0)
    a2 = synth_voice(3.0, seed=3, f0=110.0)
    gap = np.zeros(SR, dtype=np.float32)
    samples = np.concatenate([a1, gap, b, gap, a2])
    return wav_bytes(samples, SR), [(0.0, 4.0), (5.0, 9.0), (10.0, 13.0)]


def upload(data: bytes, name: str = "meeting.wav") -> dict:
    return {"audio": (name, data, "application/octet-stream")}


def test_identify_speakers_answers_a_timeline_inside_the_speech(client: TestClient) -> None:
    data, spans = conversation()
    response = client.post("/identify-speakers", files=upload(data), data={"language": "en"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["duration_s"] == pytest.approx(13.0, abs=0.01)
    assert body["space"] == "voxceleb" and body["language_source"] == "caller"
    assert body["num_speakers"] == len(body["speakers"]) >= 1
    labels = {s["speaker"] for s in body["speakers"]}
    segments = body["segments"]
    assert segments and {s["speaker"] for s in segments} == labels
    # Time order, no overlap, and nothing inside the two silences (energy VAD: 25 ms frames).
    for before, after in itertools.pairwise(segments):
        assert before["end"] <= after["start"] + 1e-6
    for seg in segments:
        assert seg["end"] > seg["start"]
        assert any(lo - 0.05 <= seg["start"] and seg["end"] <= hi + 0.05 for lo, hi in spans), seg
    covered = sum(s["end"] - s["start"] for s in segments)
    # Every bit of detected speech is someone's (the energy VAD skips the synthetic voices'
    # syllable gaps, so that is less than the 11 s the voices span).
    assert covered == pytest.approx(body["speech_s"], abs=0.05)
    assert 5.0 < covered <= 11.0
    # Nobody is enrolled: every voice is unknown, decided by find-match's rule.
    for speaker in body["speakers"]:
        assert speaker["speaker"].startswith("unknown_")
        assert speaker["enrolled"] is False
        assert speaker["decision"] == "no_match" and speaker["reason"] == "empty_gallery"
        assert speaker["candidates"] == []
    assert sum(s["speech_s"] for s in body["speakers"]) == pytest.approx(covered, abs=0.01)


def test_num_speakers_fixes_the_count(client: TestClient) -> None:
    data, _ = conversation()
    for n in (1, 2, 3):
        body = client.post(
            "/identify-speakers", files=upload(data), data={"num_speakers": str(n)}
        ).json()
        assert body["num_speakers"] == n, body
        assert [s["speaker"] for s in body["speakers"]] == [f"unknown_{i + 1}" for i in range(n)]
        assert body["segments"][0]["speaker"] == "unknown_1"  # numbered by first appearance
    body = client.post("/identify-speakers", files=upload(data), data={"max_speakers": "1"}).json()
    assert body["num_speakers"] == 1


def test_an_enrolled_voice_is_named_by_the_find_match_decision(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], tiny_registry: ModelRegistry
) -> None:
    """With a threshold every candidate passes, the closest enrolled speaker is the match; with
    one nobody passes, the same voice is unknown, with its closest candidate still listed."""
    data, _ = conversation()
    for threshold, expected in ((-1.0, "alice"), (1.01, "unknown_1")):
        settings = make_settings(
            tmp_path / f"data{threshold}", tiny_model_dirs, thresholds={"voxceleb": threshold}
        )
        with TestClient(create_app(settings, models=tiny_registry)) as client:
            enrolled = client.post(
                "/speakers",
                files=[("audio", ("a.wav", wav_bytes(synth_voice(4.0, seed=1, f0=110.0), SR)))],
                data={"external_id": "alice", "name": "Alice", "language": "en"},
            )
            assert enrolled.status_code == 201, enrolled.text
            body = client.post(
                "/identify-speakers",
                files=upload(data),
                data={"num_speakers": "1", "language": "en", "top_n": "3"},
            ).json()
        (speaker,) = body["speakers"]
        assert speaker["speaker"] == expected
        assert speaker["candidates"][0]["id"] == "alice"
        assert speaker["score"] == pytest.approx(speaker["candidates"][0]["score"])
        assert speaker["enrolled"] is (expected == "alice")
        assert speaker["decision"] == ("match" if expected == "alice" else "no_match")
        assert speaker["name"] == ("Alice" if expected == "alice" else None)
        assert body["threshold"] == pytest.approx(threshold)
        # Each voice says what it was decided against: here the operator's fixed threshold, which
        # no quality class changes; its SNR is measured over its own segments.
        assert speaker["threshold"] == pytest.approx(threshold)
        assert speaker["threshold_quality"] is None and speaker["snr_db"] is not None
        assert {s["speaker"] for s in body["segments"]} == {expected}


def test_rttm_by_query_or_accept_header(client: TestClient) -> None:
    data, _ = conversation()
    as_json = client.post(
        "/identify-speakers", files=upload(data), data={"num_speakers": "2"}
    ).json()
    for kwargs in ({"params": {"format": "rttm"}}, {"headers": {"Accept": "text/rttm"}}):
        response = client.post(
            "/identify-speakers", files=upload(data), data={"num_speakers": "2"}, **kwargs
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/rttm")
        lines = response.text.splitlines()
        assert len(lines) == len(as_json["segments"])
        for line, seg in zip(lines, as_json["segments"], strict=True):
            fields = line.split()
            assert fields[:3] == ["SPEAKER", "meeting", "1"]
            assert float(fields[3]) == pytest.approx(seg["start"], abs=0.001)
            assert float(fields[4]) == pytest.approx(seg["end"] - seg["start"], abs=0.002)
            assert fields[7] == seg["speaker"]


@pytest.fixture
def short_client(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], tiny_registry: ModelRegistry
) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", tiny_model_dirs, max_duration_s=5.0)
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        yield client


def test_bad_requests_get_clear_errors(client: TestClient, short_client: TestClient) -> None:
    data, _ = conversation()
    both = client.post(
        "/identify-speakers", files=upload(data), data={"num_speakers": "2", "max_speakers": "3"}
    )
    assert "not both" in assert_error(both, 422, "validation_error")["error"]["message"]
    too_many = client.post("/identify-speakers", files=upload(data), data={"num_speakers": "21"})
    assert assert_error(too_many, 422, "validation_error")["error"]["details"]["limit"] == 20
    assert_error(
        client.post("/identify-speakers", files=upload(data), data={"num_speakers": "0"}),
        422,
        "validation_error",
    )
    assert_error(
        client.post("/identify-speakers", files=upload(data), data={"top_n": "101"}),
        422,
        "validation_error",
    )
    assert_error(
        client.post("/identify-speakers", files=upload(data), params={"format": "xml"}),
        422,
        "validation_error",
    )
    silence = wav_bytes(np.zeros(3 * SR, dtype=np.float32), SR)
    assert_error(client.post("/identify-speakers", files=upload(silence)), 422, "no_speech")
    assert_error(
        client.post("/identify-speakers", files=upload(b"not audio at all" * 100)),
        415,
        "undecodable_audio",
    )
    assert_error(
        client.post("/identify-speakers", data={"language": "en"}), 422, "validation_error"
    )
    assert_error(short_client.post("/identify-speakers", files=upload(data)), 413, "audio_too_long")
