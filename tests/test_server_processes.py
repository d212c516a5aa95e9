"""Real `voicesearch serve` processes: several workers stay coherent, and a SIGKILL in the middle
of enrollments loses nothing that was acknowledged."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.audio_factory import synth_voice, wav_bytes
from tests.paths import REPO_ROOT
from tests.server import ServerProcess, server_env

# Real multi-worker servers, restarted several times: their own budget (see test_crash_safety).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def clip(seed: int) -> bytes:
    return wav_bytes(synth_voice(1.5, seed=seed, f0=80.0 + (seed % 40) * 5), 16_000)


def enroll(client: httpx.Client, external_id: str, seed: int) -> httpx.Response:
    return client.post(
        "/speakers",
        files=[("audio", ("a.wav", clip(seed), "audio/wav"))],
        data={"external_id": external_id, "language": "en"},
    )


def best(client: httpx.Client, seed: int) -> str | None:
    response = client.post(
        "/find-match",
        files=[("audio", ("p.wav", clip(seed), "audio/wav"))],
        data={"language": "en", "top_n": "1"},
    )
    assert response.status_code == 200, response.text
    match = response.json()["best_match"]
    return match["id"] if match else None


def verify_index(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "index", "verify"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_workers_read_their_writes(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    env = server_env(tmp_path / "data", tiny_model_dirs)
    log_path = tmp_path / "server.log"
    server = ServerProcess(env, workers=2, log_path=log_path, log_level="info")
    try:
        server.wait_ready()
        # A fresh connection per request spreads the requests over both workers.
        for i in range(12):
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                assert enroll(client, f"w{i}", i).status_code == 201
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                assert best(client, i) == f"w{i}"  # the very next search sees it
        for i in range(12):
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                assert best(client, i) == f"w{i}"
        for i in range(0, 12, 2):
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                assert client.delete(f"/speakers/w{i}").status_code == 200
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                assert best(client, i) != f"w{i}"  # gone at once, whichever worker answers
    finally:
        server.stop()
    result = verify_index(env)
    assert result.returncode == 0, result.stdout + result.stderr

    # Workers log exactly like one process: the service's INFO lines, with time, level, logger.
    log = log_path.read_text()
    timestamped = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    ready = re.findall(timestamped + r"INFO voicesearch: voicesearch \S+ ready in", log)
    assert len(ready) == 2, log[-3000:]  # one per worker
    assert len(re.findall(timestamped + r"INFO service\.\S+: index voxceleb", log))
    for line in log.splitlines():
        if "WARNING" in line or "ERROR" in line:
            assert re.match(timestamped + r"(WARNING|ERROR) \S+: ", line), line


def test_sigkill_during_enrollment_loses_nothing_acknowledged(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    env = server_env(tmp_path / "data", tiny_model_dirs)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(prefix: str) -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            for i in range(1000):
                if stop.is_set():
                    return
                try:
                    response = enroll(client, f"{prefix}{i}", i)
                except httpx.HTTPError:
                    return  # the server died under us: this one was never acknowledged
                if response.status_code == 201:
                    with lock:
                        acknowledged.append(f"{prefix}{i}")

    for round_number in range(2):
        server = ServerProcess(env, workers=2, log_path=tmp_path / f"server{round_number}.log")
        server.wait_ready()
        stop.clear()
        threads = [
            threading.Thread(target=writer, args=(f"k{round_number}{t}-",)) for t in range(3)
        ]
        for thread in threads:
            thread.start()
        deadline_acks = len(acknowledged) + 8
        while len(acknowledged) < deadline_acks and any(t.is_alive() for t in threads):
            threading.Event().wait(0.05)
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    result = verify_index(env)
    assert result.returncode == 0, result.stdout + result.stderr
    server = ServerProcess(env, workers=1, log_path=tmp_path / "final.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            total = client.get("/speakers", params={"limit": 1}).json()["total"]
            assert total >= len(acknowledged)
            for external_id in acknowledged:
                assert client.get(f"/speakers/{external_id}").status_code == 200, external_id
            seed = int(acknowledged[-1].rsplit("-", 1)[1])
            # the newest acknowledged speaker is searchable after the crash
            match = best(client, seed)
            assert match is not None
    finally:
        server.stop()
