"""Start a real `voicesearch serve` for the benchmarks (loopback only) and time its start-up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.common import REAL_VOXCELEB, REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_command(*args: str, log_level: str = "warning") -> list[str]:
    """``voicesearch <args>`` as a command line for this interpreter (``python -m service.cli``),
    run with ``cwd`` = the checkout whose code should serve."""
    return [sys.executable, "-m", "service.cli", "--log-level", log_level, *args]


def bench_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Real VoxCeleb model; no lang-ID or CN-Celeb weights exist here (pass ``language``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICESEARCH_")}
    env.update(
        {
            "VOICESEARCH_DATA_DIR": str(data_dir),
            "VOICESEARCH_MODEL_VOXCELEB": str(REAL_VOXCELEB),
            "VOICESEARCH_MODEL_LANGID": str(data_dir / "no-langid-model"),
            "VOICESEARCH_MODEL_CNCELEB": str(data_dir / "no-cnceleb-model"),
            "VOICESEARCH_MODEL_CACHE_DIR": str(data_dir.parent / "model-cache"),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class Server:
    def __init__(
        self, env: dict[str, str], *, workers: int = 1, log: Path, repo: Path = REPO
    ) -> None:
        """``repo``: the checkout whose code serves (another one gives a same-run baseline)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.log_path = log
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            cli_command(
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                log_level="info",
            ),
            cwd=repo,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 600.0) -> float:
        """Seconds from process start until /health answers 200."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"not ready:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
