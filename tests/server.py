"""Run a real `voicesearch serve` in a subprocess for tests that need real processes
(several workers, SIGKILL). Loopback only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.model_factory import shared_model_cache
from tests.paths import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(data_dir: Path, model_dirs: dict[str, Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICESEARCH_")}
    env.update(
        {
            "VOICESEARCH_DATA_DIR": str(data_dir),
            "VOICESEARCH_MODEL_LANGID": str(model_dirs["langid"]),
            "VOICESEARCH_MODEL_VOXCELEB": str(model_dirs["voxceleb"]),
            "VOICESEARCH_MODEL_CNCELEB": str(model_dirs["cnceleb"]),
            "VOICESEARCH_MODEL_CACHE_DIR": str(shared_model_cache(model_dirs)),
            # Synthetic voices: energy VAD and no speech minimums (see tests/api/conftest.py).
            "VOICESEARCH_VAD": "energy",
            "VOICESEARCH_MIN_ENROLL_SPEECH_S": "0",
            "VOICESEARCH_MIN_PROBE_SPEECH_S": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class ServerProcess:
    def __init__(self, env: dict[str, str], *, workers: int = 1, log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "--log-level",
                "warning",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches every worker
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hooks, no snapshot, no flush."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._log.close()
