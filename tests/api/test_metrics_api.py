"""`/metrics` in one process (ASGI): what is counted, what is read at scrape time, who may read.

The counts of several workers adding up is tested with a real `serve --workers 2` in
tests/test_metrics_workers.py. The default registry lives as long as the test process, so
counts are compared before and after.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import ADMIN_KEY, READ_KEY
from tests.metrics_text import value
from tests.paths import REPO_ROOT


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
    # The scrape's own worker has applied every change (its search caught up), and nothing is
    # queued for inference while it answers.
    assert "voicesearch_index_changes_behind{" in after
    assert value(after, "voicesearch_index_changes_behind", space=space) == 0
    assert value(after, "voicesearch_inference_queue", state="running") == 0
    assert value(after, "voicesearch_inference_queue", state="capacity") >= 1
    in_force = client.get("/calibration").json()["spaces"][space]
    assert in_force["source"] == "shipped"  # no calibration stored: the shipped t(N) rule
    assert value(
        after, "voicesearch_decision_threshold", space=space, source="shipped"
    ) == pytest.approx(in_force["threshold"])
    assert value(after, "voicesearch_calibrated", space=space) == 0

    client.delete("/speakers/alice")
    assert value(scrape(client), "voicesearch_speakers", space=space) == 0


def test_metrics_need_a_read_key_when_keys_are_on(keyed_client: TestClient) -> None:
    refused = keyed_client.get("/metrics")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    wrong = {"X-API-Key": "wrong-key-0123456789abc"}
    assert keyed_client.get("/metrics", headers=wrong).status_code == 401
    assert "voicesearch_http_requests_total" in scrape(keyed_client, **{"X-API-Key": READ_KEY})
    assert "voicesearch_speakers" in scrape(keyed_client, Authorization=f"Bearer {ADMIN_KEY}")


def test_grafana_dashboard_queries_metrics_that_exist(client: TestClient) -> None:
    dashboard = json.loads(
        (REPO_ROOT / "docs" / "grafana" / "voicesearch-dashboard.json").read_text()
    )
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"voicesearch_[a-z_]+", target["expr"])
    }
    client.get("/speakers")  # so the request series exist
    exposed = set(re.findall(r"^# TYPE (\S+)", scrape(client), re.M))
    # Histograms are queried by their series (_bucket), counters by their _total.
    exposed |= {f"{name}{suffix}" for name in exposed for suffix in ("_bucket", "_total")}
    assert used and used <= exposed, used - exposed
