"""A throw-away PostgreSQL cluster for the tests: real server, loopback only, gone afterwards.

``PostgresCluster.start`` runs ``initdb`` into a fresh temporary directory and starts
``postgres`` on a free 127.0.0.1 port (its Unix socket in the same directory), in its own
process group; ``stop`` shuts it down immediately and kills that group, and the directory is
deleted. Each test gets its own empty database (``create_database``).

As root (CI containers) the server runs as the ``postgres`` system user via ``runuser``:
PostgreSQL refuses to run as root. Durability settings are off (``fsync``,
``synchronous_commit``, ``full_page_writes``): the cluster dies with the test session, and the
tests kill API nodes, never the database server, so no test depends on them.

Where the binaries are found: ``VOICESEARCH_PG_BIN`` (a directory holding ``initdb`` and
``postgres``), else the newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout), else
``PATH``. :func:`missing_reason` says why the cluster cannot run here, or ``None``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.server import free_port, kill_group

#: Set to 1 (``.ci/run`` does) to make a missing PostgreSQL a test failure instead of a skip.
REQUIRE_ENV = "VOICESEARCH_REQUIRE_POSTGRES"
BIN_ENV = "VOICESEARCH_PG_BIN"
SUPERUSER = "voicesearch"


def find_bin_dir() -> Path | None:
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    return None


def missing_reason() -> str | None:
    """Why a PostgreSQL cluster cannot be started here, or None if it can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -c constraints.txt -e '.[postgres]')"
    if find_bin_dir() is None:
        return (
            "PostgreSQL server binaries (initdb, postgres) not found: install them (Debian: "
            f"apt-get install postgresql) or point {BIN_ENV} at their directory"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


class PostgresCluster:
    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        """``durable``: keep PostgreSQL's defaults (fsync, synchronous commit) for benchmarks;
        tests turn them off (module docstring)."""
        self.bin_dir = bin_dir
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="voicesearch-pg-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        if self._as_root:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)

    def _command(self, *argv: str) -> list[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        return [*prefix, *argv]

    def start(self, timeout_s: float = 60.0) -> None:
        subprocess.run(
            self._command(
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ),
            check=True,
            capture_output=True,
        )
        for _attempt in range(3):  # a free port can be taken between asking and binding
            self.port = free_port()
            if self._launch(timeout_s):
                return
        raise RuntimeError(f"PostgreSQL did not start:\n{self._log_tail()}")

    def _launch(self, timeout_s: float) -> bool:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server holds it until it exits
        with log:
            self.process = subprocess.Popen(
                self._command(
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=200",
                    *self._speed_options(),
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches every backend
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._ready():
                return True
            time.sleep(0.1)
        self._kill_group()
        return False

    def _speed_options(self) -> list[str]:
        if self.durable:
            return []
        flags = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
        return [arg for flag in flags for arg in ("-c", flag)]

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # names are generated here, not input

    def create_database(self, template: str | None = None) -> str:
        """A new database, empty or a copy of ``template`` (a URL from this method whose
        connections are all closed); returns its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        source = f' TEMPLATE "{template.rsplit("/", 1)[1]}"' if template else ""
        self._admin(f'CREATE DATABASE "{name}"{source}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def _kill_group(self) -> None:
        kill_group(self.process)

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster), then SIGKILL the whole group."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self._kill_group()
        shutil.rmtree(self.root, ignore_errors=True)
