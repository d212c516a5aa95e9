"""Engine and session factory.

SQLite specifics (the default deployment), and why:

* ``journal_mode=WAL`` — readers never block the (single) writer and vice versa, so searches in
  one worker keep running while another worker enrolls.
* ``synchronous=NORMAL`` — in WAL mode a commit is appended to the ``-wal`` file with ``write()``
  before ``COMMIT`` returns, so it survives the *process* being killed (SIGKILL, OOM): the data
  is in the OS page cache and SQLite replays the WAL on the next open. Only an OS crash / power
  loss can lose the last few commits (never corrupt the file). That is the durability promised
  by a 2xx here; set ``synchronous=FULL`` via :func:`make_engine`'s ``synchronous`` argument to
  also cover power loss at the cost of one fsync per commit.
* ``busy_timeout`` — a writer waits (inside SQLite) for the write lock instead of failing at once.
* ``foreign_keys=ON`` — SQLite ignores FOREIGN KEY clauses unless asked; ``ON DELETE CASCADE``
  (speaker → utterances → embeddings, speaker → profiles) relies on it.
* Transactions: the stdlib ``sqlite3`` driver (Python < 3.12 "legacy transaction control") emits
  ``BEGIN`` lazily, only before DML, and never for SELECT or DDL. We switch that off
  (``isolation_level = None``) and emit ``BEGIN`` ourselves from SQLAlchemy's ``begin`` event — the
  recipe from SQLAlchemy's SQLite dialect docs ("Serializable isolation / Savepoints /
  Transactional DDL"). That gives real snapshot reads, transactional DDL for Alembic, and lets a
  connection ask for ``BEGIN IMMEDIATE`` (execution option :data:`SQLITE_BEGIN_OPTION`): a write
  transaction takes the write lock up front, so two writers never both hold a read snapshot and
  then deadlock upgrading it (SQLite would fail one of them with SQLITE_BUSY immediately, without
  waiting for ``busy_timeout``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from storage.dialects import postgres_connect_args

#: Connection execution option naming the SQLite BEGIN flavour ("DEFERRED", "IMMEDIATE",
#: "EXCLUSIVE") used when that connection starts a transaction. Ignored on other databases.
SQLITE_BEGIN_OPTION = "voicesearch_sqlite_begin"

_BEGIN_MODES = {"DEFERRED", "IMMEDIATE", "EXCLUSIVE"}

DEFAULT_BUSY_TIMEOUT_MS = 30_000


def make_engine(
    url: str,
    *,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    synchronous: str = "NORMAL",
    echo: bool = False,
) -> Engine:
    """Create an engine for ``url``; SQLite files get WAL, busy timeout, FKs and explicit BEGIN."""
    sa_url = make_url(url)
    if sa_url.get_backend_name() == "postgresql":
        # Writers' lock, read isolation and retries: storage.dialects.
        connect_args = postgres_connect_args(sa_url, busy_timeout_ms=busy_timeout_ms)
        return create_engine(sa_url, echo=echo, pool_pre_ping=True, connect_args=connect_args)
    if sa_url.get_backend_name() != "sqlite":
        return create_engine(sa_url, echo=echo, pool_pre_ping=True)

    database = sa_url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        # A fresh install points at ./data/voicesearch.db; create ./data instead of failing.
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)

    engine = create_engine(
        sa_url,
        echo=echo,
        # The driver's own timeout (seconds) is the busy timeout for the connect itself.
        connect_args={"timeout": busy_timeout_ms / 1000},
    )
    _install_sqlite_hooks(engine, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous)
    return engine


def _install_sqlite_hooks(engine: Engine, *, busy_timeout_ms: int, synchronous: str) -> None:
    if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"invalid synchronous mode {synchronous!r}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching an existing file to WAL needs a lock, and another
            # process may be doing the same thing right now.
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = str(conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")).upper()
        if mode not in _BEGIN_MODES:
            raise ValueError(f"invalid SQLite BEGIN mode {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: records are built from ORM rows after commit without reloading.
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
