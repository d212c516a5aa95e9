"""`POST /identify-speakers` goes through the inference queue like every request that needs a
model: refused at once with 503 ``overloaded`` and ``Retry-After`` when the queue is full, and
run as several steps, so a find-match arriving during a long recording is answered without
waiting for all of it. Inference is slowed down by a sleep around the real (tiny) encoders."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.pipeline.registry import ModelRegistry
from service.recordings import identify
from tests.api.conftest import assert_error
from tests.api.test_backpressure import audio, slow_encoders
from tests.api.test_identify_api import conversation, upload


@pytest.mark.timeout(120)
def test_identify_is_refused_with_retry_after_when_the_queue_is_full(
    make_client: Callable[..., TestClient],
    tiny_registry: ModelRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client(inference_concurrency=1, max_inference_queue=0)
    slow_encoders(monkeypatch, tiny_registry, 1.5)
    answers: list[httpx.Response] = []
    search = threading.Thread(
        target=lambda: answers.append(
            client.post("/find-match", files=audio(1), data={"language": "en"})
        )
    )
    search.start()
    deadline = time.monotonic() + 10
    while client.get("/health").json()["inference"]["admitted"] == 0:
        assert time.monotonic() < deadline, "the search was never admitted"
        time.sleep(0.02)
    data, _ = conversation()
    started = time.monotonic()
    refused = client.post("/identify-speakers", files=upload(data), data={"language": "en"})
    took = time.monotonic() - started
    body = assert_error(refused, 503, "overloaded")
    assert body["error"]["details"] == {"admitted": 1, "capacity": 1}
    assert int(refused.headers["retry-after"]) >= 1
    assert took < 1.0, took  # at once, not after the search
    search.join(30)
    assert answers and answers[0].status_code == 200, answers
    again = client.post("/identify-speakers", files=upload(data), data={"language": "en"})
    assert again.status_code == 200, again.text


@pytest.mark.timeout(120)
def test_a_search_is_answered_between_the_steps_of_a_long_identify(
    make_client: Callable[..., TestClient],
    tiny_registry: ModelRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client(inference_concurrency=1)
    monkeypatch.setattr(identify, "CHUNK", 2)  # ~8 steps of windows for this recording
    real = identify.embed_windows

    def slow_step(*args: Any) -> Any:  # each step of windows takes at least 0.6 s
        time.sleep(0.6)
        return real(*args)

    monkeypatch.setattr(identify, "embed_windows", slow_step)
    data, _ = conversation()
    results: list[httpx.Response] = []
    running = threading.Thread(
        target=lambda: results.append(
            client.post("/identify-speakers", files=upload(data), data={"language": "en"})
        )
    )
    running.start()
    deadline = time.monotonic() + 10
    while client.get("/health").json()["inference"]["running"] == 0:
        assert time.monotonic() < deadline, "the identification never started inference"
        time.sleep(0.02)
    time.sleep(0.3)
    started = time.monotonic()
    search = client.post("/find-match", files=audio(1), data={"language": "en"})
    took = time.monotonic() - started
    assert search.status_code == 200, search.text
    assert running.is_alive(), f"the search waited for the whole identification ({took:.1f} s)"
    running.join(60)
    assert results and results[0].status_code == 200, results
    assert results[0].json()["num_speakers"] >= 1
