"""`/metrics` of a real `voicesearch serve --workers 2`: the counts of both workers add up,
whichever worker answers the scrape; JSON request logs carry the ids clients received."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.metrics_text import value
from tests.paths import REPO_ROOT
from tests.server import ServerProcess, server_env

LISTS = 30  # GET /speakers → 200
MISSES = 10  # GET /speakers/<id> → 404
SCRAPES = 4
#: Bound on extra requests sent to reach the second worker (the kernel picks who accepts).
MAX_EXTRA = 200


def request_lines(log_path: Path) -> list[dict]:
    lines = []
    for raw in log_path.read_text().splitlines():
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            continue  # a line from outside the service's logging (a library's print)
        if entry.get("logger") == "voicesearch.requests":
            lines.append(entry)
    return lines


def get(base_url: str, path: str) -> httpx.Response:
    # A fresh connection per request lets either worker accept it.
    with httpx.Client(base_url=base_url, timeout=60) as client:
        return client.get(path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_workers_counts_add_up(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    # A file left by an earlier run would be summed in (or, unreadable, break /metrics): serve
    # empties the folder at start.
    stale = data_dir / "metrics" / "counter_999999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from a previous run")
    env = server_env(data_dir, tiny_model_dirs, VOICESEARCH_LOG_FORMAT="json")
    log_path = tmp_path / "server.log"
    server = ServerProcess(env, workers=2, log_path=log_path, log_level="info")
    try:
        server.wait_ready()
        assert not stale.exists()
        ids = []
        for _ in range(LISTS):
            response = get(server.base_url, "/speakers")
            assert response.status_code == 200
            ids.append(response.headers["X-Request-ID"])
        for i in range(MISSES):
            assert get(server.base_url, f"/speakers/nobody-{i}").status_code == 404
        lists = LISTS
        # Both workers must have counted some: else this would not test the sum.
        while len({e["pid"] for e in request_lines(log_path) if e["route"] == "/speakers"}) < 2:
            assert lists < LISTS + MAX_EXTRA, "every request went to one worker"
            assert get(server.base_url, "/speakers").status_code == 200
            lists += 1

        for scrape in range(SCRAPES):
            response = get(server.base_url, "/metrics")
            assert response.status_code == 200, response.text
            text = response.text
            total = "voicesearch_http_requests_total"
            assert value(text, total, route="/speakers", status="200") == lists
            assert value(text, total, route="/speakers/{speaker_id}", status="404") == MISSES
            assert value(text, total, route="/metrics", status="200") == scrape  # earlier ones
            count = "voicesearch_http_request_duration_seconds_count"
            assert value(text, count, route="/speakers") == lists
            # Every bucket series sums over workers too: +Inf holds every observation.
            bucket = "voicesearch_http_request_duration_seconds_bucket"
            assert value(text, bucket, route="/speakers", le="+Inf") == lists
    finally:
        server.stop()

    lines = request_lines(log_path)
    by_id = {e["request_id"]: e for e in lines}
    for request_id in ids:  # the id each client got is the id of its log line
        entry = by_id[request_id]
        assert entry["route"] == "/speakers" and entry["status"] == 200
        assert entry["method"] == "GET" and entry["duration_ms"] >= 0
    assert len({e["pid"] for e in lines}) == 2


def test_the_command_line_does_not_import_prometheus_client_early() -> None:
    """prometheus_client picks its multiprocess mode when first imported: `serve` must set
    PROMETHEUS_MULTIPROC_DIR before that, so nothing the command line imports may import it."""
    code = (
        "import sys, service.cli, service.commands.serve, service.api.auth;"
        "service.cli.build_parser();"
        "print('prometheus_client' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
