"""Enroll tokens over HTTP with tiny random models: an ``unknown_<n>`` voice of an
identify-speakers answer enrolled (or added to a speaker) without re-uploading; once, by the
same key, before it expires; every misuse a clear error; stored in the database, so another app
on the same database redeems it. Each test runs on SQLite and on PostgreSQL. What the real model
does with the enrolled voice is tested in test_identify_real_model.py."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from scipy import signal
from sqlalchemy import text

from service.app import create_app
from service.pipeline.registry import ModelRegistry
from storage.db import make_engine, make_session_factory
from storage.enroll_tokens import Claim, EnrollTokenStore, NewToken, token_digest
from storage.models import utcnow
from tests.api.conftest import assert_error, make_settings
from tests.api.test_identify_api import conversation, upload

ADMIN_A = "admin:alice:admin-key-a-0123456789"
ADMIN_B = "admin:bob:admin-key-b-0123456789"
READER = "read:reader:read-key-r-0123456789"


def key(entry: str) -> dict[str, str]:
    return {"X-API-Key": entry.rsplit(":", 1)[1]}


class Clock:
    """A clock the test moves (token expiry)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def apps(
    tmp_path: Path,
    tiny_model_dirs: dict[str, Path],
    tiny_registry: ModelRegistry,
    database_url: str,
    clock: Clock,
) -> Iterator[Callable[[], TestClient]]:
    """Apps (think: workers or nodes) on ONE database, each with its own data directory and
    its own token objects; every one on the test's clock."""
    opened: list[TestClient] = []

    def factory() -> TestClient:
        settings = make_settings(
            tmp_path / f"node{len(opened)}",
            tiny_model_dirs,
            database_url=database_url,
            api_keys=",".join((ADMIN_A, ADMIN_B, READER)),
            enroll_token_ttl_s=600,
        )
        client = TestClient(create_app(settings, models=tiny_registry))
        client.__enter__()
        client.app.state.identifier.tokens.clock = clock  # type: ignore[attr-defined]
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


def identify(client: TestClient, who: str = ADMIN_A) -> dict:
    data, _ = conversation()
    response = client.post(
        "/identify-speakers",
        files=upload(data),
        data={"language": "en", "num_speakers": "2"},
        headers=key(who),
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_an_unknown_voice_is_enrolled_from_its_token_once(
    apps: Callable[[], TestClient], clock: Clock
) -> None:
    client = apps()
    body = identify(client)
    voices = {s["speaker"]: s for s in body["speakers"]}
    assert set(voices) == {"unknown_1", "unknown_2"}
    for voice in voices.values():
        assert len(voice["enroll_token"]) >= 40
        expires = datetime.fromisoformat(voice["enroll_token_expires_at"])
        assert expires == clock.now + timedelta(seconds=600)
    token = voices["unknown_1"]["enroll_token"]

    enrolled = client.post(
        "/speakers",
        data={"enroll_token": token, "external_id": "ann", "name": "Ann"},
        headers=key(ADMIN_A),
    )
    assert enrolled.status_code == 201, enrolled.text
    speaker = enrolled.json()["speaker"]
    assert speaker["id"] == "ann" and speaker["name"] == "Ann"
    assert speaker["utterance_count"] == 1
    # The excerpt is the voice's own speech: about what identify-speakers attributed to it.
    assert speaker["speech_seconds"] == pytest.approx(voices["unknown_1"]["speech_s"], abs=1.0)

    # Once only, through this app or another one on the same database.
    again = client.post(
        "/speakers", data={"enroll_token": token, "external_id": "ann2"}, headers=key(ADMIN_A)
    )
    assert_error(again, 409, "enroll_token_used")
    other_node = apps()
    assert_error(
        other_node.post(
            "/speakers", data={"enroll_token": token, "external_id": "x"}, headers=key(ADMIN_A)
        ),
        409,
        "enroll_token_used",
    )
    # ... where the second voice's token, issued by the first app, is redeemed as more speech
    # of the speaker just enrolled.
    added = other_node.post(
        "/speakers/ann/utterances",
        data={"enroll_token": voices["unknown_2"]["enroll_token"]},
        headers=key(ADMIN_A),
    )
    assert added.status_code == 201, added.text
    assert added.json()["speaker"]["utterance_count"] == 2

    audit = client.get("/audit", headers=key(ADMIN_A)).json()["entries"]
    actions = {(e["action"], e["details"].get("source"), e["details"].get("voice")) for e in audit}
    assert ("speaker.enroll", "enroll_token", "unknown_1") in actions
    assert ("speaker.add_utterances", "enroll_token", "unknown_2") in actions
    assert all(e["actor"] == "alice" for e in audit)


def test_a_token_from_a_phone_recording_keeps_its_band(
    apps: Callable[[], TestClient], database_url: str
) -> None:
    """The token of a voice heard in an 8 kHz recording holds 8 kHz audio, so the enrollment
    records the clip as narrowband, as an upload of the recording itself would (the telephone-
    band scoring of ``service.search.narrowband`` tells natively narrowband speakers apart)."""
    client = apps()
    data, _ = conversation()
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    phone = io.BytesIO()
    sf.write(phone, signal.resample_poly(samples, 1, 2), rate // 2, format="WAV", subtype="PCM_16")
    response = client.post(
        "/identify-speakers",
        files=upload(phone.getvalue()),
        data={"language": "en", "num_speakers": "2"},
        headers=key(ADMIN_A),
    )
    assert response.status_code == 200, response.text
    token = {s["speaker"]: s for s in response.json()["speakers"]}["unknown_1"]["enroll_token"]
    enrolled = client.post(
        "/speakers", data={"enroll_token": token, "external_id": "caller"}, headers=key(ADMIN_A)
    )
    assert enrolled.status_code == 201, enrolled.text
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rates = (
                connection.execute(
                    text(
                        "SELECT u.source_sample_rate FROM utterances u "
                        "JOIN speakers s ON s.id = u.speaker_id WHERE s.external_id = 'caller'"
                    )
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert rates == [8000]


def test_a_token_expires_and_is_bound_to_its_key(
    apps: Callable[[], TestClient], clock: Clock
) -> None:
    client = apps()
    voices = {s["speaker"]: s for s in identify(client)["speakers"]}
    first, second = voices["unknown_1"]["enroll_token"], voices["unknown_2"]["enroll_token"]

    # Another admin key may not use alice's token (and learns nothing about its state).
    assert_error(
        client.post(
            "/speakers", data={"enroll_token": first, "external_id": "b"}, headers=key(ADMIN_B)
        ),
        403,
        "enroll_token_forbidden",
    )
    # A read key may not enroll at all, and is given no tokens by identify-speakers.
    assert_error(
        client.post("/speakers", data={"enroll_token": first}, headers=key(READER)),
        403,
        "forbidden",
    )
    assert all(s["enroll_token"] is None for s in identify(client, READER)["speakers"])

    clock.now += timedelta(seconds=601)
    assert_error(
        client.post(
            "/speakers", data={"enroll_token": second, "external_id": "c"}, headers=key(ADMIN_A)
        ),
        410,
        "enroll_token_expired",
    )
    # The forbidden attempt did not spend the first token; time did.
    assert_error(
        client.post(
            "/speakers", data={"enroll_token": first, "external_id": "a"}, headers=key(ADMIN_A)
        ),
        410,
        "enroll_token_expired",
    )
    assert client.get("/speakers", headers=key(ADMIN_A)).json()["total"] == 0


def test_a_refused_enrollment_gives_the_token_back_and_bad_bodies_are_422(
    apps: Callable[[], TestClient],
) -> None:
    client = apps()
    voices = {s["speaker"]: s for s in identify(client)["speakers"]}
    token = voices["unknown_1"]["enroll_token"]
    data, _ = conversation()
    taken = client.post(
        "/speakers", files=upload(data), data={"external_id": "taken"}, headers=key(ADMIN_A)
    )
    assert taken.status_code == 201, taken.text

    refused = client.post(
        "/speakers", data={"enroll_token": token, "external_id": "taken"}, headers=key(ADMIN_A)
    )
    assert_error(refused, 409, "duplicate_external_id")
    assert_error(
        client.post(
            "/speakers/nobody/utterances", data={"enroll_token": token}, headers=key(ADMIN_A)
        ),
        404,
        "speaker_not_found",
    )
    for form, files in (
        ({"enroll_token": token}, upload(data)),  # a token and audio
        ({"enroll_token": token, "start": "1"}, None),  # a token with a cut
        ({"enroll_token": "short"}, None),  # not a token
        ({"external_id": "nothing"}, None),  # neither a token nor audio
    ):
        assert_error(
            client.post("/speakers", data=form, files=files, headers=key(ADMIN_A)),
            422,
            "validation_error",
        )
    assert_error(
        client.post(
            "/speakers", data={"enroll_token": "x" * 43, "external_id": "n"}, headers=key(ADMIN_A)
        ),
        404,
        "enroll_token_not_found",
    )
    # Still usable after all of that.
    ok = client.post(
        "/speakers", data={"enroll_token": token, "external_id": "free"}, headers=key(ADMIN_A)
    )
    assert ok.status_code == 201, ok.text


def test_one_claim_wins_a_race_and_expired_rows_are_purged(migrated_database_url: str) -> None:
    engine = make_engine(migrated_database_url)
    store = EnrollTokenStore(make_session_factory(engine))
    now = utcnow()
    store.issue(
        [NewToken(token_digest("t" * 43), "alice", "unknown_1", "en", 2.0, b"flac")],
        now,
        now + timedelta(minutes=15),
    )
    outcomes: list[Claim] = []
    barrier = threading.Barrier(6)

    def claim() -> None:
        barrier.wait()
        outcomes.append(store.claim(token_digest("t" * 43), "alice", now).outcome)

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(o.value for o in outcomes) == ["claimed"] + ["used"] * 5

    # The next issue drops expired audio at once and expired rows a day later.
    later = now + timedelta(minutes=16)
    store.issue([], later, later + timedelta(minutes=15))
    assert store.claim(token_digest("t" * 43), "alice", later).outcome is Claim.USED
    store.issue([], now + timedelta(days=2), now + timedelta(days=2, minutes=15))
    assert store.count() == 0
    assert store.claim(token_digest("t" * 43), "alice", later).outcome is Claim.MISSING
    engine.dispose()
