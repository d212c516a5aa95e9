"""Access control: API keys with roles, 401/403 in the standard error shape, open mode, CORS,
and the audit log of every change (who, never the key)."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from service.api.access import AccessControlMiddleware
from service.api.access_log import QuerySecretFilter, scrub_url
from service.api.auth import ApiKeyConfigError, KeyRing, parse_key_entries
from service.app import create_app
from service.core.settings import Settings
from service.pipeline.registry import ModelRegistry
from tests.api.conftest import assert_error, make_settings
from tests.audio_factory import synth_voice, wav_bytes
from tests.paths import REPO_ROOT
from tests.server import server_env

ADMIN_KEY = "admin-key-0123456789abcdef"
READ_KEY = "read-key-0123456789abcdef"
OTHER_ADMIN = "second-admin-key-0123456789"


def clip(seed: int) -> bytes:
    return wav_bytes(synth_voice(1.5, seed=seed, f0=90.0 + 15 * seed), 16_000)


def audio_files(seed: int = 1) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("audio", ("a.wav", clip(seed), "audio/wav"))]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed_settings(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> Settings:
    return make_settings(
        tmp_path / "data",
        tiny_model_dirs,
        api_keys=f"admin:ops-team:{ADMIN_KEY},read:{READ_KEY},admin:{OTHER_ADMIN}",
        allowed_origins=["https://app.example.com"],
    )


@pytest.fixture
def keyed(keyed_settings: Settings, tiny_registry: ModelRegistry) -> Iterator[TestClient]:
    with TestClient(create_app(keyed_settings, models=tiny_registry)) as client:
        yield client


# --- configuration ---------------------------------------------------------------------------
def test_key_formats_names_and_errors(tmp_path: Path) -> None:
    keys = parse_key_entries(
        [f"admin:ops:{ADMIN_KEY}", f"read:{READ_KEY}", f"READ:{OTHER_ADMIN}"], where="test"
    )
    assert [(k.name, k.role) for k in keys] == [
        ("ops", "admin"),
        ("read-1", "read"),
        ("read-2", "read"),
    ]
    for bad in (
        "superuser:" + ADMIN_KEY,
        "admin:short",
        "admin",
        "a:b:c:d",
        "admin:x y:" + "k" * 20,
    ):
        with pytest.raises(ApiKeyConfigError) as info:
            parse_key_entries([bad], where="test")
        assert ADMIN_KEY not in str(info.value)  # a key never appears in an error message
    with pytest.raises(ApiKeyConfigError):
        KeyRing(parse_key_entries([f"admin:{ADMIN_KEY}", f"read:{ADMIN_KEY}"], where="t"))

    key_file = tmp_path / "keys"
    key_file.write_text(f"# deploy keys\n\nadmin:deploy:{ADMIN_KEY}\nread:{READ_KEY}\n")
    ring = KeyRing.from_settings(
        Settings(_env_file=None, api_keys_file=key_file, data_dir=tmp_path)  # type: ignore[call-arg]
    )
    assert ring.enabled
    assert ring.identify(ADMIN_KEY).name == "deploy"
    assert ring.identify(READ_KEY).role == "read"
    assert ring.identify(READ_KEY + "x") is None
    assert ring.identify("") is None


def test_keys_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICESEARCH_API_KEYS", f"admin:{ADMIN_KEY},read:ro:{READ_KEY}")
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert ADMIN_KEY not in repr(settings)  # SecretStr: never printed
    ring = KeyRing.from_settings(settings)
    assert {(k.name, k.role) for k in ring.keys} == {("admin-1", "admin"), ("ro", "read")}


# --- requests --------------------------------------------------------------------------------
def test_health_and_docs_stay_open(keyed: TestClient) -> None:
    response = keyed.get("/health")
    assert response.status_code == 200
    assert response.json()["auth"] == "enabled"
    assert keyed.get("/openapi.json").status_code == 200
    assert keyed.get("/docs").status_code == 200
    schemes = keyed.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}


def test_missing_or_wrong_key_is_401(keyed: TestClient) -> None:
    for headers in ({}, bearer("nope-nope-nope-nope"), {"X-API-Key": READ_KEY + "0"}):
        response = keyed.get("/speakers", headers=headers)
        body = assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        assert READ_KEY not in response.text
    assert_error(keyed.post("/compare-voices", json={}), 401, "unauthorized")
    assert_error(keyed.post("/find-match", json={}), 401, "unauthorized")
    assert_error(keyed.post("/extract-embedding"), 401, "unauthorized")
    assert_error(keyed.delete("/speakers/x"), 401, "unauthorized")
    assert_error(keyed.get("/audit"), 401, "unauthorized")
    assert body["error"]["message"]


def test_read_key_reads_but_cannot_write(keyed: TestClient) -> None:
    for headers in (bearer(READ_KEY), {"X-API-Key": READ_KEY}):
        assert keyed.get("/speakers", headers=headers).status_code == 200
        compare = keyed.post(
            "/compare-voices",
            json={"embedding1": [1.0, 0.0], "embedding2": [1.0, 0.1]},
            headers=headers,
        )
        assert compare.status_code == 200, compare.text
    headers = bearer(READ_KEY)
    response = keyed.post(
        "/speakers", files=audio_files(), data={"external_id": "a"}, headers=headers
    )
    body = assert_error(response, 403, "forbidden")
    assert body["error"]["details"] == {"required_role": "admin", "key_role": "read"}
    assert_error(keyed.delete("/speakers/a", headers=headers), 403, "forbidden")
    assert_error(keyed.patch("/speakers/a", json={"name": "x"}, headers=headers), 403, "forbidden")
    assert_error(
        keyed.post("/speakers/a/utterances", files=audio_files(), headers=headers), 403, "forbidden"
    )
    assert_error(keyed.get("/audit", headers=headers), 403, "forbidden")
    assert keyed.get("/speakers", headers=bearer(ADMIN_KEY)).json()["total"] == 0


def test_admin_writes_and_every_change_is_audited(keyed: TestClient) -> None:
    admin = bearer(ADMIN_KEY)
    response = keyed.post(
        "/speakers", files=audio_files(1), data={"external_id": "alice"}, headers=admin
    )
    assert response.status_code == 201, response.text
    assert keyed.get("/speakers/alice", headers=bearer(READ_KEY)).status_code == 200
    response = keyed.post("/speakers/alice/utterances", files=audio_files(2), headers=admin)
    assert response.status_code == 201, response.text
    other = {"X-API-Key": OTHER_ADMIN}
    assert keyed.patch("/speakers/alice", json={"name": "A"}, headers=other).status_code == 200
    assert keyed.delete("/speakers/alice", headers=other).status_code == 200
    # A failed change leaves no audit row.
    assert keyed.delete("/speakers/alice", headers=other).status_code == 404

    response = keyed.get("/audit", headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 4
    got = [(e["action"], e["speaker_id"], e["actor"], e["role"]) for e in body["entries"]]
    assert got == [
        ("speaker.delete", "alice", "admin-1", "admin"),
        ("speaker.update", "alice", "admin-1", "admin"),
        ("speaker.add_utterances", "alice", "ops-team", "admin"),
        ("speaker.enroll", "alice", "ops-team", "admin"),
    ]
    assert body["entries"][1]["details"] == {"fields": ["name"]}
    assert ADMIN_KEY not in response.text and OTHER_ADMIN not in response.text
    page = keyed.get("/audit", params={"limit": 1, "offset": 1, "speaker": "alice"}, headers=admin)
    assert [e["action"] for e in page.json()["entries"]] == ["speaker.update"]
    assert keyed.get("/audit", params={"speaker": "bob"}, headers=admin).json()["total"] == 0


def test_keys_are_never_logged(
    keyed_settings: Settings, tiny_registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(keyed_settings, models=tiny_registry)) as client:
        client.get("/speakers", headers=bearer(READ_KEY))
        client.get("/speakers", headers=bearer(READ_KEY + "x"))
        client.delete("/speakers/none", headers=bearer(READ_KEY))
    text = caplog.text
    assert "ops-team" in text  # start-up names the keys…
    for key in (ADMIN_KEY, READ_KEY, OTHER_ADMIN):
        assert key not in text  # …never the keys themselves


def test_open_mode_warns_and_audits_anonymous(
    tmp_path: Path,
    tiny_model_dirs: dict[str, Path],
    tiny_registry: ModelRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_dirs)
    caplog.set_level(logging.WARNING)
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        assert "NO API KEYS CONFIGURED" in caplog.text
        assert client.get("/health").json()["auth"] == "disabled"
        response = client.post("/speakers", files=audio_files(), data={"external_id": "bob"})
        assert response.status_code == 201
        entries = client.get("/audit").json()["entries"]
        assert [(e["action"], e["actor"], e["role"]) for e in entries] == [
            ("speaker.enroll", "anonymous", None)
        ]


def test_docs_can_be_closed(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], tiny_registry: ModelRegistry
) -> None:
    settings = make_settings(
        tmp_path / "data", tiny_model_dirs, api_keys=f"read:{READ_KEY}", public_docs=False
    )
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        assert client.get("/openapi.json").status_code == 404
        assert client.get("/docs").status_code == 404
        assert client.get("/health").status_code == 200


def test_cors_only_for_allowed_origins(keyed: TestClient) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    ok = keyed.options("/find-match", headers={"Origin": "https://app.example.com", **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    evil = keyed.options("/find-match", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in evil.headers
    simple = keyed.get("/health", headers={"Origin": "https://app.example.com"})
    assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
    other = keyed.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_cli_index_rebuild_is_audited(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    env = server_env(tmp_path / "data", tiny_model_dirs)
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "index", "rebuild", "--space", "voxceleb"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(tmp_path / "data" / "voicesearch.db") as database:
        rows = database.execute("SELECT action, actor, role, details FROM audit_log").fetchall()
    assert len(rows) == 1
    action, actor, role, details = rows[0]
    assert (action, role) == ("index.rebuild", "operator")
    assert actor.startswith("cli:")
    assert json.loads(details) == {"space": "voxceleb", "speakers": 0, "generation": 1}


# --- issue 10: keys checked before the body, secrets kept out of the access log ------------------
def test_every_route_with_a_body_is_guarded_on_its_headers(keyed: TestClient) -> None:
    """The access-control middleware knows the role of every route that accepts a body (so it
    can refuse before reading it); the role comes from the route's own dependencies."""
    app: Any = keyed.app
    [middleware] = [m for m in app.user_middleware if m.cls is AccessControlMiddleware]
    guard = AccessControlMiddleware(
        app, keyring=app.state.keyring, routes=middleware.kwargs["routes"]
    )
    roles = {
        (method, route.path): role for route, role in guard.guarded for method in route.methods
    }
    assert roles[("POST", "/speakers")] == "admin"
    assert roles[("POST", "/speakers/{speaker_id}/utterances")] == "admin"
    assert roles[("PATCH", "/speakers/{speaker_id}")] == "admin"
    assert roles[("GET", "/audit")] == "admin"
    for path in ("/find-match", "/compare-voices", "/extract-embedding", "/detect-language"):
        assert roles[("POST", path)] == "read"
    assert roles[("GET", "/health")] is None
    bodies = [key for key in roles if key[0] in {"POST", "PATCH", "PUT"}]
    assert bodies and all(roles[key] for key in bodies), roles


def test_a_refusal_before_the_body_closes_the_connection(keyed: TestClient) -> None:
    response = keyed.post("/speakers", files=audio_files(), data={"external_id": "a"})
    assert_error(response, 401, "unauthorized")
    assert response.headers["connection"] == "close"
    assert response.headers["www-authenticate"] == "Bearer"
    response = keyed.post("/speakers", files=audio_files(), headers=bearer(READ_KEY))
    assert_error(response, 403, "forbidden")
    assert response.headers["connection"] == "close"
    assert keyed.get("/speakers", headers=bearer(ADMIN_KEY)).json()["total"] == 0


def call_without_body(
    app: Any, method: str, path: str, content_type: str, headers: list[tuple[bytes, bytes]]
) -> Any:
    """Run one request through the ASGI app whose client announced 10 MB and sent no body byte.

    ``receive`` behaves like that client: it never delivers a byte. A refusal must come from
    the headers alone; an app that asks for the body fails the test (at once, or after 2 s of
    waiting). Returns the response start message (status and headers)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", content_type.encode()),
            (b"content-length", b"10000000"),
            *headers,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    sent: list[dict[str, Any]] = []
    asked: list[bool] = []

    async def receive() -> dict[str, Any]:
        asked.append(True)
        await anyio.sleep_forever()  # the body never comes
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        with anyio.move_on_after(2):  # a refusal that waited for the body would hang here
            await app(scope, receive, send)

    anyio.run(run)
    assert not asked, f"{method} {path}: the app asked for the body before refusing"
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    return start


def test_no_body_byte_is_read_before_a_refusal(keyed: TestClient) -> None:
    """Issue 10 item 4: headers announcing a body, and no body at all, get their 401/403 at once;
    the app never asks for a byte of the body (measured on a real server in
    tests/test_hostile_input.py, test_uploads_without_a_valid_key_are_refused_before_the_body)."""
    form, json_ = "multipart/form-data; boundary=B", "application/json"
    routes = [
        ("POST", "/speakers", form, "admin"),
        ("POST", "/speakers/x/utterances", form, "admin"),
        ("PATCH", "/speakers/x", json_, "admin"),
        ("POST", "/find-match", form, "read"),
        ("POST", "/find-match", json_, "read"),
        ("POST", "/compare-voices", json_, "read"),
        ("POST", "/extract-embedding", form, "read"),
        ("POST", "/detect-language", form, "read"),
    ]
    cases: list[tuple[list[tuple[bytes, bytes]], str, int]] = [
        ([], "any", 401),
        ([(b"authorization", b"Bearer wrong-key-0123456789")], "any", 401),
        ([(b"x-api-key", READ_KEY.encode())], "admin", 403),
    ]
    for method, path, content_type, role in routes:
        for headers, applies_to, status in cases:
            if applies_to not in ("any", role):
                continue
            start = call_without_body(keyed.app, method, path, content_type, headers)
            assert start["status"] == status, (method, path, content_type, headers)
            assert (b"connection", b"close") in start["headers"], (method, path)


@pytest.mark.parametrize(
    ("logged", "scrubbed"),
    [
        ("/speakers?api_key=abc123", "/speakers?api_key=[redacted]"),
        ("/x?name=a&key=s3cr3t&limit=2", "/x?name=a&key=[redacted]&limit=2"),
        (
            "/x?X-API-Key=s&token=t;access_token=u",
            "/x?X-API-Key=[redacted]&token=[redacted];access_token=[redacted]",
        ),
        ("/x?api%5Fkey=s&password=p", "/x?api%5Fkey=[redacted]&password=[redacted]"),
        ("/speakers?name=keyboard-less&limit=3", "/speakers?name=keyboard-less&limit=3"),
        ("/health", "/health"),
    ],
)
def test_query_string_secrets_are_scrubbed(logged: str, scrubbed: str) -> None:
    assert scrub_url(logged) == scrubbed
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:1", "GET", logged, "1.1", 401),
        None,
    )
    QuerySecretFilter().filter(record)
    assert record.getMessage() == f'127.0.0.1:1 - "GET {scrubbed} HTTP/1.1" 401'
