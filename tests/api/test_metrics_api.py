"""`/metrics` in one process (ASGI): what is counted, what is read at scrape time, who may read.

The counts of several workers adding up is tested with a real `serve --workers 2` in
tests/test_metrics_workers.py. The default registry lives as long as the test process, so
counts are compared before and after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import make_settings
from tests.metrics_text import value

READ_KEY = "read-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


def scrape(client: TestClient, **headers: str) -> str:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_requests_stages_and_state(client: TestClient, voice_wav: Callable[..., bytes]) -> None:
    before = scrape(client)
    requests = "voicesearch_http_requests_total"
    stage_count = "voicesearch_inference_seconds_count"

    assert client.get("/speakers/nobody").status_code == 404
    assert client.get("/speakers/someone-else").status_code == 404
    enrolled = client.post(
        "/speakers",
        files=[("audio", ("a.wav", voice_wav(seed=1), "audio/wav"))],
        data={"external_id": "alice"},
    )
    assert enrolled.status_code == 201, enrolled.text
    found = client.post("/find-match", files={"audio": ("p.wav", voice_wav(seed=1), "audio/wav")})
    assert found.status_code == 200, found.text
    space = found.json()["space"]
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Counted by route *template* and status: two ids, one series.
    assert delta(requests, route="/speakers/{speaker_id}", status="404", method="GET") == 2
    assert delta(requests, route="/speakers", status="201", method="POST") == 1
    assert delta(requests, route="/find-match", status="200") == 1
    assert delta(requests, route="/metrics", status="200") == 1  # the first scrape
    assert delta("voicesearch_http_request_duration_seconds_count", route="/find-match") == 1
    # Two clips went through the pipeline: both decoded, checked for speech, language-detected;
    # enrollment embeds in every space, the probe in its routed space.
    assert delta(stage_count, stage="decode") == 2
    assert delta(stage_count, stage="vad") == 2
    assert delta(stage_count, stage="language_id", model="langid") == 2
    assert delta(stage_count, stage="embedding", model=space) == 2
    assert delta("voicesearch_inference_seconds_sum", stage="embedding") > 0

    # State, read when scraped.
    assert value(after, "voicesearch_speakers", space=space) == 1
    assert value(after, "voicesearch_speakers_enrolled") == 1
    assert value(after, "voicesearch_index_vectors", space=space, index_type="flat") == 1
    assert value(after, "voicesearch_model_loaded", role="langid") == 1
    threshold = client.get("/calibration").json()["spaces"][space]["threshold"]
    assert value(
        after, "voicesearch_decision_threshold", space=space, source="default"
    ) == pytest.approx(threshold)
    assert value(after, "voicesearch_calibrated", space=space) == 0

    client.delete("/speakers/alice")
    assert value(scrape(client), "voicesearch_speakers", space=space) == 0


@pytest.fixture
def keyed(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], tiny_registry: ModelRegistry
) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path / "data", tiny_model_dirs, api_keys=f"read:{READ_KEY},admin:{ADMIN_KEY}"
    )
    with TestClient(create_app(settings, models=tiny_registry)) as test_client:
        yield test_client


def test_metrics_need_a_read_key_when_keys_are_on(keyed: TestClient) -> None:
    refused = keyed.get("/metrics")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert (
        keyed.get("/metrics", headers={"X-API-Key": "wrong-key-0123456789abc"}).status_code == 401
    )
    assert "voicesearch_http_requests_total" in scrape(keyed, **{"X-API-Key": READ_KEY})
    assert "voicesearch_speakers" in scrape(keyed, Authorization=f"Bearer {ADMIN_KEY}")
