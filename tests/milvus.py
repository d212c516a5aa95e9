"""Milvus Lite for the tests: embedded (a ``.db`` path) or as its own server process.

``milvus-lite`` (the ``milvus`` extra) is a Milvus that runs offline. Opened through a local
path it lives inside the one process that opened it (a second process gets DataDirLockedError).
Its package also ships a server, ``python -m milvus_lite server --data-dir D --port P``: started
once, any number of processes reach it at ``http://127.0.0.1:P`` with the same pymilvus client
a Milvus cluster takes. :class:`MilvusLiteServer` runs that server on a free loopback port in its
own process group, killed by ``stop``.

Where it is missing the tests skip with :func:`missing_reason`; with
``VOICESEARCH_REQUIRE_MILVUS=1`` (``.ci/run``) that skip is a failure.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.server import free_port, kill_group

REQUIRE_ENV = "VOICESEARCH_REQUIRE_MILVUS"


def missing_reason() -> str | None:
    """Why Milvus Lite cannot run here, or None if it can."""
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as error:
        return (
            f"Milvus Lite tests: {error.name} is not installed "
            "(pip install -c constraints.txt -e '.[milvus]')"
        )
    return None


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


class MilvusLiteServer:
    """``python -m milvus_lite server`` on 127.0.0.1, in its own process group."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="milvus-lite-")
        self.root = Path(self._tmp.name)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        for _attempt in range(3):  # a free port can be taken between asking and binding
            self.port = free_port()
            log = open(self.root / "server.log", "ab")  # noqa: SIM115 - held by the server
            with log:
                self.process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "milvus_lite",
                        "server",
                        "--data-dir",
                        str(self.root / "data"),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                        # Every test app is a client; its default pool of 10 threads is small.
                        "--max-workers",
                        "32",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._answers():
                    return
                time.sleep(0.2)
            kill_group(self.process)
        raise RuntimeError(f"Milvus Lite server did not start:\n{self.log_tail()}")

    def _answers(self) -> bool:
        """The server answers a real request. A listening port is not enough: the port is bound
        before the server has finished starting, and on a loaded machine the first client's
        connect then timed out (pymilvus waits 10 s) in a CI run."""
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, timeout=5)
        except Exception:  # refused or timed out: not listening or not started yet
            return False
        try:
            client.list_collections()
            return True
        except Exception:
            return False
        finally:
            client.close()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "server.log").read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        kill_group(self.process)
        self._tmp.cleanup()
