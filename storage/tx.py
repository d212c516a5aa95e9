"""Transactions, and the one way this package retries a database that stays busy.

* Every public write is ONE database transaction (:meth:`Transactions.write_transaction`).
* On SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (see ``storage.db``): writers
  queue on the write lock (``busy_timeout``) instead of deadlocking when upgrading a read lock,
  and "does this external_id exist?" followed by the INSERT is atomic across processes.
* If the lock is still not available after ``busy_timeout``, the whole unit of work (a
  transaction, or one Core query such as ``ChangeLog.change_cursor``) is retried a few times with
  jittered exponential backoff by :func:`retry_while_busy`, then :class:`StorageBusyError` is
  raised.
* On PostgreSQL (``storage.dialects``) a write transaction starts by taking the writers'
  advisory lock instead, reads run at REPEATABLE READ, and serialisation failures, deadlocks and
  lock timeouts count as "busy".
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage import dialects
from storage.db import SQLITE_BEGIN_OPTION
from storage.errors import StorageBusyError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def is_busy(error: OperationalError) -> bool:
    """Whether ``error`` is SQLite saying another connection holds the lock (or PostgreSQL
    failing a transaction that is worth running again)."""
    message = str(error.orig).lower()
    return "locked" in message or "busy" in message or dialects.is_retryable(error)


def retry_while_busy(work: Callable[[], T], *, attempts: int, base_delay_s: float) -> T:
    """Run ``work``; while it fails because the database is busy, wait and run it again.

    Waits ``base_delay_s * 2**(attempt - 1)``, jittered by ±50 %, between attempts; after
    ``attempts`` busy failures raises :class:`StorageBusyError`. Any other error is raised as is.
    ``work`` must be a whole unit (a transaction that rolls back on failure, or a read)."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except OperationalError as error:
            if not is_busy(error):
                raise
            if attempt == attempts:
                raise StorageBusyError(
                    f"database still locked after {attempts} attempts"
                ) from error
            delay = base_delay_s * 2 ** (attempt - 1)
            logger.warning("database busy (attempt %d/%d), retrying", attempt, attempts)
            time.sleep(delay * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


class Transactions:
    """Base of the stores: a session factory bound to an engine, and transactions on it."""

    #: Whole-transaction retries when SQLite stays locked beyond ``busy_timeout``.
    write_attempts = 5
    retry_base_delay_s = 0.05

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        bind = session_factory.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError("session_factory must be bound to an Engine")
        self._sf = session_factory
        self._engine: Engine = bind
        self._sqlite = bind.dialect.name == "sqlite"
        self._postgres = dialects.is_postgres(bind)

    @property
    def session_factory(self) -> sessionmaker[Session]:
        return self._sf

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def is_sqlite(self) -> bool:
        return self._sqlite

    def with_retries(self, work: Callable[[], T]) -> T:
        """:func:`retry_while_busy` with this store's retry settings."""
        return retry_while_busy(
            work, attempts=self.write_attempts, base_delay_s=self.retry_base_delay_s
        )

    def _run(self, fn: Callable[[Session], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction; retry the whole of it while SQLite reports busy."""

        def attempt() -> T:
            with self._sf() as session:
                try:
                    if write:
                        # Starts the transaction now, as BEGIN IMMEDIATE on SQLite.
                        session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                        if self._postgres:
                            dialects.begin_write(session)
                    elif self._postgres:
                        session.connection(execution_options=dialects.READ_OPTIONS)
                    result = fn(session)
                    if write:
                        session.commit()
                    return result
                except BaseException:
                    session.rollback()
                    raise

        return self.with_retries(attempt)

    def write_transaction(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in one write transaction (``BEGIN IMMEDIATE``), committed at the end."""
        return self._run(fn, write=True)

    def read_transaction(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in one read transaction (a consistent snapshot on SQLite)."""
        return self._run(fn, write=False)
