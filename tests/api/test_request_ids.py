"""Request ids: in a response header, in every error body (whoever builds it), in the logs."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.core.json_logs import JsonFormatter
from service.core.logs import REQUEST_LOGGER, logging_config
from service.core.request_context import bind_request_id, request_id_for
from service.core.settings import Settings
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import READ_KEY

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def error_id(response) -> str:
    """The id in the error body, which must be the id in the header."""
    body = response.json()
    assert body["success"] is False, body
    assert body["error"]["request_id"] == response.headers["X-Request-ID"], body
    return body["error"]["request_id"]


def test_every_response_has_an_id_and_a_client_id_is_kept(client: TestClient) -> None:
    first = client.get("/health").headers["X-Request-ID"]
    second = client.get("/health").headers["X-Request-ID"]
    assert HEX_ID.match(first) and HEX_ID.match(second) and first != second
    # A proxy's or client's trace id is kept, so one id follows the request end to end…
    kept = client.get("/health", headers={"X-Request-ID": "trace-42.a:b"})
    assert kept.headers["X-Request-ID"] == "trace-42.a:b"
    # …unless it could inject into logs or headers: then a fresh one.
    for hostile in ("two words", "x" * 200, "a\u00e9b", '"quoted"'):
        replaced = client.get("/health", headers={"X-Request-ID": hostile.encode()})
        assert HEX_ID.match(replaced.headers["X-Request-ID"]), hostile


def test_error_bodies_carry_the_request_id(
    client: TestClient, settings: Settings, voice_wav: Callable[..., bytes]
) -> None:
    # ServiceError (404), validation (422), the framework's 405 and an unmatched path (404).
    error_id(client.get("/speakers/nobody"))
    error_id(client.get("/speakers", params={"limit": 0}))
    error_id(client.put("/health"))
    error_id(client.get("/no/such/path"))
    # A pipeline error raised in a worker thread (undecodable audio, 415).
    bad = client.post("/find-match", files={"audio": ("x.wav", b"not audio", "audio/wav")})
    assert bad.status_code == 415
    error_id(bad)
    # Built by the body-size middleware, not by an exception handler (413).
    huge = client.post(
        "/find-match",
        content=b"{" + b" " * (settings.max_json_bytes + 1) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    error_id(huge)
    # The client's own id is the one in the body.
    named = client.get("/speakers/nobody", headers={"X-Request-ID": "abc-123"})
    assert error_id(named) == "abc-123"


def test_unhandled_error_500_carries_the_id(
    settings: Settings, tiny_registry: ModelRegistry
) -> None:
    app = create_app(settings, models=tiny_registry)

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    error_id(response)


def test_auth_errors_carry_the_id(keyed_client: TestClient) -> None:
    response = keyed_client.get("/speakers")
    assert response.status_code == 401
    error_id(response)
    forbidden = keyed_client.delete("/speakers/x", headers={"X-API-Key": READ_KEY})
    assert forbidden.status_code == 403
    error_id(forbidden)


def test_request_log_line_names_route_status_and_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        response = client.get("/speakers/nobody?api_key=secret-value")
    records = [r for r in caplog.records if r.name == REQUEST_LOGGER]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["method"] == "GET"
    assert line["route"] == "/speakers/{speaker_id}"  # the template: one series per route
    assert line["path"] == "/speakers/nobody"  # never the query string (it may hold secrets)
    assert line["status"] == 404
    assert line["duration_ms"] >= 0
    assert line["level"] == "INFO" and line["logger"] == REQUEST_LOGGER
    assert "secret-value" not in json.dumps(line)


def test_json_formatter_fields_and_exceptions() -> None:
    bind_request_id(request_id_for(None))
    record = logging.LogRecord(
        "voicesearch.x", logging.ERROR, __file__, 1, "failed %s", ("op",), None
    )
    record.space = "voxceleb"  # as `extra={"space": ...}` would set it
    try:
        raise ValueError("inner")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed op"
    assert line["space"] == "voxceleb"
    assert HEX_ID.match(line["request_id"])
    assert "ValueError: inner" in line["exception"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", line["time"])


def test_log_format_choices() -> None:
    plain = logging_config("info", "text")
    json_lines = logging_config("info", "json")
    assert "()" not in plain["formatters"]["default"]
    assert json_lines["formatters"]["default"]["()"].endswith("JsonFormatter")
    # JSON: the request log replaces uvicorn's access line; plain: the other way round.
    assert json_lines["loggers"]["uvicorn.access"]["level"] == logging.WARNING
    assert json_lines["loggers"][REQUEST_LOGGER]["level"] == logging.INFO
    assert plain["loggers"][REQUEST_LOGGER]["level"] == logging.WARNING
    with pytest.raises(ValueError):
        Settings(_env_file=None, log_format="xml")  # type: ignore[call-arg]
