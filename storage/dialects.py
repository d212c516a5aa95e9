"""What is different on PostgreSQL (the several-machines deployment), kept in one place.

The portable modules (``storage.tx``, ``storage.metadata_filter``, ``migrations/env.py``) call
these helpers and stay free of PostgreSQL details. SQLite specifics live in ``storage.db``.

**Writers take one transaction-scoped advisory lock (:data:`WRITE_LOCK_KEY`)** as the first
statement of every write transaction (:func:`begin_write`). Why: the change log
(``index_changes.seq``, a sequence) is read as "everything up to the newest seq I can see"
(``storage.change_log``). On SQLite that is correct because there is one writer at a time, so
seqs become visible in commit order. On PostgreSQL two writers draw seqs 41 and 42 from the
sequence concurrently, and 42 may COMMIT first: a reader that then sees 42 moves its cursor
past 41, and when 41 becomes visible nobody ever applies it. Holding the lock from before the
seq is drawn until COMMIT makes draw order = commit order: PostgreSQL releases a transaction's
locks only after its commit is visible to every new snapshot (``CommitTransaction``: the
procarray is updated before locks are released; and WAL commit records, which replicas replay,
are written in the same order), so whoever sees seq N also sees every committed seq below N.

The alternatives, and why not them: a reader-side watermark (``pg_snapshot_xmin``: only
consume rows whose writing transaction is older than every running one) is correct without
serialising writers, but the cursor then has to be a transaction id rather than a seq, which
changes the snapshot format and the gallery's replay logic for one backend; a
SERIALIZABLE log does not help (the anomaly is about visibility order, not a serialisation
conflict). The cost of the lock is that writes are serial, exactly as on SQLite (``BEGIN
IMMEDIATE``); a write transaction is a few milliseconds (embeddings are computed before it
starts), and searches never take it. It also makes "does this external_id exist? then INSERT"
atomic, as on SQLite.

**Reads** run at ``REPEATABLE READ``: one snapshot per read transaction, like SQLite's WAL
reads (a count and the page it describes agree). Read-only transactions at that level never
fail with a serialisation error. Writes stay at ``READ COMMITTED``, so every statement after the
lock sees what the previous lock holder committed.

**Retries**: serialisation failures, deadlocks and lock timeouts (``lock_timeout`` = the busy
timeout, set per connection) are what SQLite calls "busy": ``storage.tx`` retries the whole
transaction on them.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, Engine, String, case, cast, func, literal, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from storage.errors import InvalidMetadataFilterError
from storage.models import Speaker

#: pg_advisory_xact_lock key serialising writers (the bytes of "vsrc"); any constant that no
#: other application sharing the database uses.
WRITE_LOCK_KEY = 0x76737263

#: SQLSTATEs that mean "try the whole transaction again": serialization_failure,
#: deadlock_detected, lock_not_available (lock_timeout expired).
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def postgres_connect_args(url: URL, *, busy_timeout_ms: int) -> dict[str, Any]:
    """Driver arguments: ``lock_timeout`` plays SQLite's ``busy_timeout`` (a writer waits that
    long for the write lock, then the attempt fails as retryable). An ``options`` already in
    the URL wins."""
    if "options" in url.query:
        return {}
    return {"options": f"-c lock_timeout={int(busy_timeout_ms)}"}


def begin_write(session: Session) -> None:
    """First statement of a write transaction: wait for the writers' lock (module docstring)."""
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})


def lock_for_migration(connection: Any) -> None:
    """Two processes upgrading one database at once: the second waits, then finds the schema at
    head (Alembic reads ``alembic_version`` after this, inside the same transaction). No
    ``lock_timeout`` here: a node starting during a long migration waits for it to finish."""
    connection.execute(text("SET LOCAL lock_timeout = 0"))
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})


#: Execution options of a read transaction (module docstring).
READ_OPTIONS: dict[str, Any] = {"isolation_level": "REPEATABLE READ"}


def is_retryable(error: DBAPIError) -> bool:
    return getattr(error.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def metadata_condition(key: str, value: Any) -> ColumnElement[bool]:
    """Speakers whose metadata has ``value`` at top-level ``key``, with jsonb equality: the same
    rules as the SQLite filter (same JSON kind, so ``true != 1`` and ``"1" != 1``; ``1 == 1.0``;
    objects compare by content, arrays in order; a JSON ``null`` is not a missing key)."""
    try:
        document = json.dumps(value, allow_nan=False)
    except ValueError:
        raise InvalidMetadataFilterError(
            f"metadata filter on {key!r}: NaN and Infinity are not JSON"
        ) from None
    if "\\u0000" in document:
        # jsonb cannot hold U+0000, so no stored row can be compared equal to it.
        raise InvalidMetadataFilterError(f"metadata filter on {key!r}: U+0000 is not supported")
    # The column is ``json`` (text that kept its escapes); ``json`` accepts "\u0000" but jsonb
    # does not, and one such row would make the cast fail for the whole query. Such a row is
    # read as {} (matches nothing) instead; CASE evaluates only the branch it takes.
    stored = cast(Speaker.meta, String)
    as_jsonb = case(
        (func.strpos(stored, "\\u0000") > 0, cast(literal("{}"), JSONB)),
        else_=cast(stored, JSONB),
    )
    element = as_jsonb.op("->", return_type=JSONB)(literal(key, String))
    return element == cast(literal(document, String), JSONB)


def advance_sequences(connection: Any, tables: list[Any]) -> None:
    """After rows were inserted with explicit ids (``storage.copy``): move each table's id
    sequence past the largest id, or the next insert would collide with a copied row."""
    for table in tables:
        key = list(table.primary_key.columns)
        if len(key) != 1 or not key[0].autoincrement or key[0].type.python_type is not int:
            continue
        connection.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{key[0].name}'), "
                f"COALESCE(MAX({key[0].name}), 1), MAX({key[0].name}) IS NOT NULL) "
                f"FROM {table.name}"
            )
        )
