"""`WebSocket /identify-live`: authentication, limits and refusals over real HTTP.

A uvicorn server in this process (tests/live_server.py) with the tiny random models and the
energy detector; a real WebSocket client (the ``websockets`` library). Every refusal must be a
JSON error (the service's error body) and a close code of 4000 + its HTTP status, or, before
the handshake is accepted, an HTTP error response with the JSON body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from service.app import create_app
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import READ_KEY, make_settings
from tests.audio_factory import synth_voice
from tests.live_client import SR, LiveRun, run_live, s16_frames
from tests.live_server import uvicorn_server

AUTH = {"X-API-Key": READ_KEY}
LIMITS = {
    "live_idle_timeout_s": 0.6,
    "live_max_session_s": 1.5,
    "live_max_frame_bytes": 8192,
    "live_max_bytes_per_s": 40_000,
    "live_max_sessions": 1,
    "inference_concurrency": 1,
    "max_inference_queue": 0,
}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dirs: dict[str, Path],
    tiny_registry: ModelRegistry,
) -> Iterator[tuple[str, FastAPI]]:
    settings = make_settings(
        tmp_path_factory.mktemp("live"),
        tiny_model_dirs,
        api_keys=f"read:{READ_KEY}",
        **LIMITS,
    )
    app = create_app(settings, models=tiny_registry)
    with uvicorn_server(app) as address:
        yield address, app


@pytest.fixture
def address(served: tuple[str, FastAPI]) -> str:
    """The server, once the previous test's session has been released (max_sessions is 1)."""
    address, app = served
    for _ in range(200):
        if app.state.live_sessions.open == 0:
            break
        time.sleep(0.02)
    return address


def refused_handshake(address: str, **kwargs: object) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{address}/identify-live{kwargs.pop('query', '')}", **kwargs)
    response = refused.value.response
    return response.status_code, json.loads(response.body)


def error_of(run: LiveRun) -> dict:
    errors = run.of_type("error")
    assert len(errors) == 1, run.events
    assert errors[0]["success"] is False
    return errors[0]["error"]


def test_a_missing_or_wrong_key_is_refused_before_the_handshake(address: str) -> None:
    status, body = refused_handshake(address)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = refused_handshake(
        address, additional_headers={"X-API-Key": "wrong-key-0123456789abcdef"}
    )
    assert status == 401 and body["error"]["message"] == "invalid API key"


def test_a_page_of_another_origin_is_refused(address: str) -> None:
    status, body = refused_handshake(
        address, additional_headers=AUTH, origin="http://elsewhere.example"
    )
    assert status == 403 and body["error"]["details"] == {"origin": "http://elsewhere.example"}
    # The service's own page (same host) is let in.
    run = run_live(address, [], headers={**AUTH, "Origin": f"http://{address}"})
    assert run.events[0]["type"] == "ready"


def test_the_key_in_the_query_string_works_and_is_not_logged(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    silence = s16_frames(np.zeros(SR, dtype=np.float32))
    run = run_live(address, silence, query=f"?api_key={READ_KEY}")
    assert run.close_code == 1000 and run.of_type("summary")[0]["reason"] == "stopped"
    # Silence (digital zero) is `silence`, one event per hop.
    assert {e["state"] for e in run.speaking} == {"silence"}
    handshakes = [r.getMessage() for r in caplog.records if "WebSocket" in r.getMessage()]
    assert handshakes and all("api_key=[redacted]" in line for line in handshakes), handshakes
    assert READ_KEY not in caplog.text


def test_f32le_at_8_khz_is_resampled_and_events_follow_the_stream(address: str) -> None:
    """Float PCM at 8 kHz (32 kB/s; sent at 2x, inside this server's 40 kB/s and its burst),
    in frames that split samples across messages: the events' stream time is the audio's own
    (resampled to 16 kHz), about one event per 0.5 s hop."""
    voice = synth_voice(2.0, sample_rate=8_000)
    data = voice.astype("<f4").tobytes()
    frames = [data[i : i + 4001] for i in range(0, len(data), 4001)]  # 4001: not a sample
    start = {"type": "start", "format": "f32le", "sample_rate": 8_000, "top_n": 2}
    run = run_live(address, frames, start, headers=AUTH, speed=2.0, frame_s=4001 / 4 / 8_000)
    assert run.close_code == 1000, run.events
    assert run.events[0]["sample_rate"] == 8_000
    ends = [e["end"] for e in run.speaking]
    # Each event is about the newest audio once a hop is due: frames of 0.125 s (and the
    # resampler's delay) put its end up to a frame past the hop.
    assert 0.5 <= ends[0] <= 0.65 and abs(ends[-1] - 2.0) <= 0.05, ends
    assert all(0 < gap <= 0.65 for gap in np.diff(ends)), ends  # the last: what is left
    assert all(e["state"] in ("unknown", "silence") for e in run.speaking)  # nobody enrolled
    assert any(e["state"] == "unknown" and e["reason"] == "empty_gallery" for e in run.speaking)
    # Every window says its measured SNR (null without speech) and, when decided, its class.
    assert all("snr_db" in e for e in run.speaking)
    voiced = [e for e in run.speaking if e["state"] == "unknown"]
    assert all(e["snr_db"] is not None and e["threshold_quality"] is None for e in voiced)


def test_idle_timeout_closes_with_4408(address: str) -> None:
    run = run_live(address, [], headers=AUTH, stop=False, linger_s=0.0)
    assert error_of(run)["code"] == "idle_timeout" and run.close_code == 4408
    assert run.of_type("summary")[0]["reason"] == "idle_timeout"


def test_session_length_is_capped(address: str) -> None:
    frames = s16_frames(np.zeros(3 * SR, dtype=np.float32))
    run = run_live(address, frames, headers=AUTH, speed=1.0)
    assert error_of(run)["code"] == "session_too_long" and run.close_code == 4408
    assert run.of_type("summary")[0]["duration_s"] <= 1.7


def test_an_oversize_frame_is_refused_with_4413(address: str) -> None:
    run = run_live(address, [b"\0" * 8194], headers=AUTH)
    error = error_of(run)
    assert error["code"] == "payload_too_large" and run.close_code == 4413
    assert error["details"] == {"max_frame_bytes": 8192, "frame_bytes": 8194}


def test_audio_faster_than_the_byte_rate_is_refused_with_4429(address: str) -> None:
    frames = [b"\0" * 8000] * 12  # 96 kB at once against 40 kB/s with a one-second burst
    run = run_live(address, frames, headers=AUTH, speed=1000.0)
    assert error_of(run)["code"] == "rate_limited" and run.close_code == 4429


def test_sessions_beyond_the_cap_are_refused_with_503(address: str) -> None:
    url = f"ws://{address}/identify-live"
    with connect(url, additional_headers=AUTH) as first:
        first.send(json.dumps({"type": "start"}))
        assert json.loads(first.recv(timeout=10))["type"] == "ready"
        status, body = refused_handshake(address, additional_headers=AUTH)
        assert status == 503 and body["error"]["code"] == "too_many_sessions"


@pytest.mark.parametrize(
    ("start", "field"),
    [
        ({"type": "begin"}, "expected"),
        ({"type": "start", "format": "mp3"}, "format"),
        ({"type": "start", "sample_rate": 4000}, "sample_rate"),
        ({"type": "start", "top_n": 0}, "top_n"),
        ({"type": "start", "volume": 3}, "fields"),
    ],
)
def test_a_bad_start_message_is_refused_with_4422(address: str, start: dict, field: str) -> None:
    run = run_live(address, [], start, headers=AUTH)
    error = error_of(run)
    assert error["code"] == "validation_error" and field in error["details"]
    assert run.close_code == 4422


def test_audio_before_start_or_other_commands_after_it_are_refused_with_4422(
    address: str,
) -> None:
    url = f"ws://{address}/identify-live"
    with connect(url, additional_headers=AUTH) as ws:
        ws.send(b"\0" * 320)  # audio before the start message
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and error["error"]["details"] == {"expected": "text"}
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4422
    run = run_live(address, ['{"type": "pause"}'], headers=AUTH)  # type: ignore[list-item]
    assert error_of(run)["details"] == {"expected": "stop"} and run.close_code == 4422


def test_bytes_that_are_not_webm_are_refused_with_4415(address: str) -> None:
    frames = [bytes(range(256)) * 8] * 4
    run = run_live(address, frames, {"type": "start", "format": "webm"}, headers=AUTH, linger_s=0.3)
    assert error_of(run)["code"] == "undecodable_audio" and run.close_code == 4415


def test_a_full_inference_queue_answers_busy_and_memory_stays_bounded(
    served: tuple[str, FastAPI], address: str
) -> None:
    """With the queue full (capacity 1, held here), every window is answered `busy` instead of
    being queued; once it frees, windows are analysed again."""
    queue = served[1].state.voicesearch.pipeline.queue
    holding, release = threading.Event(), threading.Event()

    async def hold() -> None:
        async with queue.admitted():
            holding.set()
            while not release.is_set():
                await asyncio.sleep(0.01)

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    try:
        assert holding.wait(5)
        voice = synth_voice(1.0)
        run = run_live(address, s16_frames(voice), headers=AUTH, speed=2.0, stop=False)
    finally:
        release.set()
        holder.join(5)
    assert run.of_type("busy") and not run.speaking, run.events
    assert all(e["retry_after_s"] >= 1 for e in run.of_type("busy"))
    after = run_live(address, s16_frames(synth_voice(1.0)), headers=AUTH, speed=2.0)
    assert after.speaking and not after.of_type("busy")


def test_a_frame_longer_than_the_window_advances_the_stream_by_all_of_it() -> None:
    """The stream clock (event start/end, the hop grid) counts every sample received, even in
    a frame larger than the window; the window keeps the newest samples."""
    from service.recordings.live_audio import SampleWindow

    window = SampleWindow(capacity=4)
    window.push(np.arange(3, dtype=np.float32))
    window.push(np.arange(10, 20, dtype=np.float32))  # 10 samples into a window of 4
    assert window.total == 13
    latest, end = window.latest(1.0)
    assert end == 13 and latest.tolist() == [16.0, 17.0, 18.0, 19.0]
    window.push(np.asarray([20.0], dtype=np.float32))
    assert window.latest(1.0)[0].tolist() == [17.0, 18.0, 19.0, 20.0]
