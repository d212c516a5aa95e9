"""Run a real `voicesearch serve` in a subprocess for tests that need real processes
(several workers, SIGKILL). Loopback only.

No server outlives its test: each one runs in its own process group (``start_new_session``) so
that one ``killpg`` reaches the uvicorn master and every worker; every live server is recorded
in :data:`LIVE`, and ``tests/conftest.py`` kills whatever is left after each test (a test that
failed, timed out or forgot), except a server a module-scoped fixture shares (``shared``).
The master also gets SIGKILL from the kernel if the test process itself dies
(``PR_SET_PDEATHSIG``), and an ``atexit`` hook kills what remains at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
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


def kill_group(process: subprocess.Popen | None) -> None:
    """SIGKILL the process group a ``start_new_session`` child leads, and reap the child."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


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


#: Servers started and not yet stopped or killed.
LIVE: set[ServerProcess] = set()

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_all_servers(*, keep_shared: bool = False) -> int:
    """Kill every live server's process group; returns how many there were. ``keep_shared``
    spares the servers that a module-scoped fixture shares between tests (``shared=True``):
    their fixture stops them, and the ``atexit`` hook whatever is left."""
    leftovers = [server for server in LIVE if not (keep_shared and server.shared)]
    for server in leftovers:
        server.kill()
    return len(leftovers)


atexit.register(kill_all_servers)


class ServerProcess:
    def __init__(
        self,
        env: dict[str, str],
        *,
        workers: int = 1,
        log_path: Path,
        log_level: str = "warning",  # "info" also writes uvicorn's access log
        shared: bool = False,  # outlives a test: started by a module-scoped fixture
    ) -> None:
        self.shared = shared
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
                log_level,
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
            preexec_fn=_die_with_parent,
        )
        LIVE.add(self)

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
        # The group, even when the master already exited: its workers may not have.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        self._log.close()
        LIVE.discard(self)

    def stop(self) -> None:
        """SIGTERM (graceful: snapshots are written), then SIGKILL whatever is left."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        self.kill()
