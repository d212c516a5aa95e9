"""`start`/`end` on enrollment and utterance uploads: enroll someone from part of a recording."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import assert_error
from tests.audio_factory import synth_voice, wav_bytes

SR = 16_000


def recording() -> bytes:
    """Voice A for 3 s, then voice B for 4 s."""
    a = synth_voice(3.0, seed=1, f0=110.0)
    b = synth_voice(4.0, seed=2, f0=230.0)
    return wav_bytes(np.concatenate([a, b]), SR)


def files(data: bytes) -> list:
    return [("audio", ("meeting.wav", data, "audio/wav"))]


def test_enroll_and_add_from_parts_of_one_recording(client: TestClient) -> None:
    data = recording()
    first = client.post(
        "/speakers", files=files(data), data={"external_id": "a", "start": "0", "end": "3"}
    )
    assert first.status_code == 201, first.text
    (utterance,) = first.json()["utterances"]
    assert utterance["duration_s"] == pytest.approx(3.0, abs=0.01)

    later = client.post("/speakers/a/utterances", files=files(data), data={"start": "3"})
    assert later.status_code == 201, later.text
    assert later.json()["utterances"][0]["duration_s"] == pytest.approx(4.0, abs=0.01)

    # An end past the recording means "to its end"; without start/end the whole file is used.
    past = client.post(
        "/speakers/a/utterances", files=files(data), data={"start": "5", "end": "60"}
    )
    assert past.json()["utterances"][0]["duration_s"] == pytest.approx(2.0, abs=0.01)
    whole = client.post("/speakers/a/utterances", files=files(data))
    assert whole.json()["utterances"][0]["duration_s"] == pytest.approx(7.0, abs=0.01)

    # The cut is what is stored: the same span again is a known utterance, not a new one.
    again = client.post("/speakers/a/utterances", files=files(data), data={"start": "3"})
    assert again.status_code == 201, again.text
    assert again.json()["utterances"][0]["created"] is False
    assert client.get("/speakers/a").json()["speaker"]["utterance_count"] == 4


def test_bad_spans_are_refused_and_store_nothing(client: TestClient) -> None:
    data = recording()
    reversed_span = client.post(
        "/speakers", files=files(data), data={"external_id": "b", "start": "4", "end": "2"}
    )
    assert "after start" in assert_error(reversed_span, 422, "validation_error")["error"]["message"]
    past_end = client.post("/speakers", files=files(data), data={"external_id": "b", "start": "30"})
    details = assert_error(past_end, 422, "validation_error")["error"]["details"]
    assert details["duration_s"] == pytest.approx(7.0, abs=0.01)
    huge = client.post("/speakers", files=files(data), data={"external_id": "b", "start": "1e308"})
    assert_error(huge, 422, "validation_error")
    assert_error(
        client.post("/speakers", files=files(data), data={"external_id": "b", "start": "-1"}),
        422,
        "validation_error",
    )
    # Too short a cut is the usual too-short audio.
    tiny = client.post(
        "/speakers", files=files(data), data={"external_id": "b", "start": "1", "end": "1.1"}
    )
    assert tiny.status_code == 422, tiny.text
    assert client.get("/speakers/b").status_code == 404
