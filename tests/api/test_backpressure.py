"""Workers that never stall (issue 10, items 8 and 9).

* Blocking work is never done on the event loop: while one request is stuck in it (a gallery
  size behind a long rebuild, a calibration read behind a locked database, a large stateless
  ranking or JSON body), another request of the same worker is still answered at once.
* Model inference has a bounded queue: a search is answered while a 20-file enrollment is in
  progress (inference is scheduled per file, first come first served), and a burst beyond the
  bound gets ``503 overloaded`` with ``Retry-After`` at once instead of a long wait.

Inference is made deliberately slow here by wrapping the (real, tiny) encoders with a sleep, so
the timings say something on any machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.schemas import CompareVoicesRequest
from service.pipeline.registry import ModelRegistry
from tests.audio_factory import synth_voice, wav_bytes

# Latency bounds (a second or less): under xdist nothing else runs meanwhile (tests/parallel.py).
pytestmark = pytest.mark.alone

GATE_TIMEOUT_S = 8.0


def clip(seed: int) -> bytes:
    return wav_bytes(synth_voice(1.0, seed=seed, f0=90.0 + 9 * seed), 16_000)


def audio(*seeds: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("audio", (f"{s}.wav", clip(s), "audio/wav")) for s in seeds]


def slow_encoders(monkeypatch: pytest.MonkeyPatch, registry: ModelRegistry, seconds: float) -> None:
    """Every embedding takes at least ``seconds`` (a slow CPU), through the real encoder."""
    for encoder in registry.encoders.values():
        real = encoder.embed

        def embed(samples: Any, real: Callable[..., Any] = real) -> Any:
            time.sleep(seconds)
            return real(samples)

        monkeypatch.setattr(encoder, "embed", embed)


# --- item 9: bounded inference queue, inference per file ----------------------------------------
@pytest.mark.timeout(120)
def test_a_search_is_answered_while_a_large_enrollment_runs(
    make_client: Callable[..., TestClient],
    tiny_registry: ModelRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client(inference_concurrency=1)
    assert client.post("/speakers", files=audio(1), data={"external_id": "a"}).status_code == 201
    slow_encoders(monkeypatch, tiny_registry, 0.15)  # 20 files x 2 spaces: >= 6 s of inference
    results: list[httpx.Response] = []
    enrollment = threading.Thread(
        target=lambda: results.append(
            client.post("/speakers", files=audio(*range(10, 30)), data={"external_id": "bulk"})
        )
    )
    enrollment.start()
    deadline = time.monotonic() + 10
    while client.get("/health").json()["inference"]["running"] == 0:
        assert time.monotonic() < deadline, "the enrollment never started inference"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the enrollment

    started = time.monotonic()
    search = client.post("/find-match", files=audio(1), data={"language": "en"})
    took = time.monotonic() - started
    assert search.status_code == 200, search.text
    assert search.json()["best_match"]["id"] == "a"
    # One file's step of the enrollment and this search's own inference, not all 20 files.
    assert enrollment.is_alive(), f"the search waited for the whole enrollment ({took:.1f} s)"
    assert took < 2.5, took

    enrollment.join(60)
    assert results and results[0].status_code == 201, results
    assert results[0].json()["speaker"]["utterance_count"] == 20


@pytest.mark.timeout(120)
def test_overload_is_a_quick_503_with_retry_after(
    make_client: Callable[..., TestClient],
    tiny_registry: ModelRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client(inference_concurrency=1, max_inference_queue=1)
    slow_encoders(monkeypatch, tiny_registry, 1.0)
    barrier = threading.Barrier(5)
    answers: list[tuple[int, float, httpx.Response]] = []
    lock = threading.Lock()

    def search(number: int) -> None:
        barrier.wait()
        started = time.monotonic()
        response = client.post("/find-match", files=audio(number), data={"language": "en"})
        with lock:
            answers.append((response.status_code, time.monotonic() - started, response))

    threads = [threading.Thread(target=search, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    barrier.wait()
    time.sleep(0.4)
    depth = client.get("/health").json()["inference"]
    for thread in threads:
        thread.join(60)

    assert depth["max_queue"] == 1 and depth["concurrency"] == 1
    assert 1 <= depth["admitted"] <= 2, depth
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    assert set(statuses) <= {200, 503}, statuses
    for status, took, response in answers:
        if status == 503:
            assert response.json()["error"]["code"] == "overloaded"
            assert int(response.headers["retry-after"]) >= 1
            assert took < 0.9, took  # refused at once, not after a wait
    # Once the burst is over the service takes requests again.
    assert client.post("/find-match", files=audio(9), data={"language": "en"}).status_code == 200


# --- item 8: nothing blocking on the event loop -------------------------------------------------
class Gate:
    """Makes a callable block until released (a long rebuild, a locked database…)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def blocked(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            self.released.wait(GATE_TIMEOUT_S)
            return real(*args, **kwargs)

        return blocked


EMBEDDING = [1.0, 0.5, 0.25, 0.125]


def block_gallery_size(client: TestClient, gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    gallery = client.app.state.voicesearch.gallery  # type: ignore[attr-defined]
    monkeypatch.setattr(gallery, "size", gate.wrap(gallery.size))


def block_calibration_refresh(
    client: TestClient, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = client.app.state.voicesearch.policy  # type: ignore[attr-defined]
    monkeypatch.setattr(policy, "refresh_s", 0.0)  # every decision re-reads the calibrations
    monkeypatch.setattr(policy, "refresh", gate.wrap(policy.refresh))


def block_ranking(client: TestClient, gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    matcher = client.app.state.voicesearch.matcher  # type: ignore[attr-defined]
    monkeypatch.setattr(matcher, "rank_candidates", gate.wrap(matcher.rank_candidates))


def block_json_parsing(client: TestClient, gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    parse = CompareVoicesRequest.model_validate_json
    monkeypatch.setattr(CompareVoicesRequest, "model_validate_json", gate.wrap(parse))


STALLS = {
    "health": (block_gallery_size, ("GET", "/health", {})),
    "calibration": (block_calibration_refresh, ("GET", "/calibration", {})),
    "compare-decision": (
        block_calibration_refresh,
        ("POST", "/compare-voices", {"json": {"embedding1": EMBEDDING, "embedding2": EMBEDDING}}),
    ),
    "stateless-ranking": (
        block_ranking,
        (
            "POST",
            "/find-match",
            {
                "json": {
                    "user_embedding": EMBEDDING,
                    "stored_embeddings": [{"id": "c", "embedding": EMBEDDING}],
                }
            },
        ),
    ),
    "json-body": (
        block_json_parsing,
        ("POST", "/compare-voices", {"json": {"embedding1": EMBEDDING, "embedding2": EMBEDDING}}),
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stall", sorted(STALLS))
def test_a_stalled_request_never_stalls_the_worker(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch, stall: str
) -> None:
    client = make_client()
    assert client.get("/speakers").status_code == 200  # warm: the probe below times the loop only
    block, (method, path, kwargs) = STALLS[stall]
    gate = Gate()
    block(client, gate, monkeypatch)
    stalled: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: stalled.append(client.request(method, path, **kwargs)))
    worker.start()
    try:
        assert gate.entered.wait(GATE_TIMEOUT_S), f"{stall}: the blocking call was never reached"
        started = time.monotonic()
        other = client.get("/speakers")
        took = time.monotonic() - started
        assert other.status_code == 200, other.text
        assert took < 1.0, (
            f"{stall}: another request waited {took:.1f} s: the event loop was blocked"
        )
        assert not stalled, "the stalled request finished before it was released"
    finally:
        gate.released.set()
        worker.join(GATE_TIMEOUT_S)
    assert stalled and stalled[0].status_code == 200, stalled and stalled[0].text
