"""Sustained mixed load (CI budget: ~30 s) against a real two-worker server, with access control
on: many concurrent clients enroll, search and delete. Zero 5xx (SQLite busy is retried, never a
500), zero lost acknowledgements, indexes coherent afterwards, and memory flat after warm-up.
The longer run is ``python -m bench.bench_soak --seconds 180``."""

from __future__ import annotations

import functools
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import service.bootstrap
from bench.bench_soak import run_load
from service.app import create_app
from service.pipeline.registry import ModelRegistry
from storage.db import make_engine
from tests.api.conftest import make_settings
from tests.audio_factory import synth_voice, wav_bytes
from tests.paths import REPO_ROOT
from tests.server import ServerProcess, server_env

KEY = "load-test-admin-key-0123456789"


@pytest.mark.slow
@pytest.mark.alone  # its own load on both cores; memory growth (tests/parallel.py)
@pytest.mark.timeout(600)  # 30 s of load plus two worker start-ups; its own budget
def test_sustained_mixed_load(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    env = server_env(tmp_path / "data", tiny_model_dirs, VOICESEARCH_API_KEYS=f"admin:{KEY}")
    server = ServerProcess(env, workers=2, log_path=tmp_path / "server.log")
    try:
        server.wait_ready()
        report = run_load(
            server.base_url,
            seconds=30,
            clients=10,
            server_pgid=server.process.pid,
            max_requests_per_client=2_000,
            headers={"Authorization": f"Bearer {KEY}"},
        )
    finally:
        server.stop()
    summary = report.summary()
    print("\n" + json.dumps(summary, indent=2))

    assert not report.server_errors, report.server_errors[:5]
    assert not report.connection_errors
    assert not report.unexpected, report.unexpected[:5]
    assert not report.lost_acks, report.lost_acks[:5]
    assert summary["requests"] > 50
    assert {"enroll 201", "delete 200", "search_audio 200"} <= set(summary["statuses"])
    # Flat after warm-up: allocator noise is a few MiB; a leak per request would show here.
    assert summary["memory"]["growth_after_warmup_mib"] < 40, summary["memory"]

    verify = subprocess.run(
        [sys.executable, "-m", "service.cli", "index", "verify"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_locked_database_is_retried_then_503_never_500(
    tmp_path: Path,
    tiny_model_dirs: dict[str, Path],
    tiny_registry: ModelRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process holding SQLite's write lock: a short lock is waited out (retries), a
    lock held through every retry is a clean ``503 storage_busy`` — never a 500."""
    monkeypatch.setattr(
        service.bootstrap, "make_engine", functools.partial(make_engine, busy_timeout_ms=100)
    )
    settings = make_settings(tmp_path / "data", tiny_model_dirs)
    clip = wav_bytes(synth_voice(1.5, seed=2), 16_000)
    files = [("audio", ("a.wav", clip, "audio/wav"))]
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        for name in ("a", "b", "c"):
            assert (
                client.post("/speakers", files=files, data={"external_id": name}).status_code == 201
            )
        database = sqlite3.connect(
            tmp_path / "data" / "voicesearch.db", isolation_level=None, check_same_thread=False
        )
        try:
            # Held through every retry (5 attempts, 100 ms busy timeout each, with back-off).
            database.execute("BEGIN EXCLUSIVE")
            response = client.delete("/speakers/a")
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "storage_busy"
            database.execute("ROLLBACK")

            # Held briefly: the write waits, retries and succeeds.
            database.execute("BEGIN EXCLUSIVE")
            releaser = threading.Timer(0.3, lambda: database.execute("ROLLBACK"))
            releaser.start()
            started = time.monotonic()
            response = client.delete("/speakers/b")
            releaser.join()
            assert response.status_code == 200, response.text
            assert time.monotonic() - started >= 0.25
        finally:
            database.close()
        listed = {s["id"] for s in client.get("/speakers").json()["speakers"]}
        assert listed == {"a", "c"}
        for report in client.app.state.voicesearch.gallery.verify().values():  # type: ignore[attr-defined]
            assert report.ok, report
