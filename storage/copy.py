"""Copying an installation's records from one database to another (``voicesearch migrate-store``).

Every table of the schema is copied row for row, ids kept, parents before children, in
primary-key order, ``batch`` rows per transaction on the target. Two tables are not copied:
``alembic_version`` (the target is migrated to head itself) and ``database_identity`` (a copy is
another database: snapshots and Milvus state rows of the source must not be taken for its own).

Because each batch commits on its own and tables are filled in key order, an interrupted copy
leaves the target holding a prefix of the source: ``mode="resume"`` continues after the target's
last key in each table. ``mode="replace"`` empties the target first; the default refuses a
target that holds any rows. The source is only read; it must be at the newest schema and should
not be written to during the copy (stop the service, or copy again with ``replace``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine, Table, delete, func, select, tuple_

from storage import dialects
from storage.errors import StorageError
from storage.models import Base, DatabaseIdentity

Mode = Literal["refuse", "replace", "resume"]
#: ``progress(table, rows copied so far, rows in the source table)``
Progress = Callable[[str, int, int], None]


class TargetNotEmpty(StorageError):
    """The target database already holds records (the message lists how many per table)."""


@dataclass(frozen=True)
class CopyReport:
    rows: dict[str, int]  # table -> rows in the target afterwards
    copied: dict[str, int]  # table -> rows copied by this run


def copied_tables() -> list[Table]:
    """The tables a copy moves, parents first."""
    return [t for t in Base.metadata.sorted_tables if t.name != DatabaseIdentity.__tablename__]


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: int(conn.scalar(select(func.count()).select_from(t)) or 0)
            for t in copied_tables()
        }


def copy_database(
    source: Engine,
    target: Engine,
    *,
    mode: Mode = "refuse",
    batch: int = 2_000,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every record of ``source`` into ``target`` (both at the newest schema)."""
    tables = copied_tables()
    present = {name: n for name, n in row_counts(target).items() if n}
    if present and mode == "refuse":
        raise TargetNotEmpty(
            "the target database already holds records "
            + ", ".join(f"{name}={n}" for name, n in sorted(present.items()))
            + " (replace them with --replace, or continue an interrupted copy with --resume)"
        )
    if mode == "replace":
        with target.begin() as conn:
            for table in reversed(tables):
                conn.execute(delete(table))
    copied: dict[str, int] = {}
    for table in tables:
        copied[table.name] = _copy_table(source, target, table, batch, progress)
    if dialects.is_postgres(target):
        with target.begin() as conn:
            dialects.advance_sequences(conn, tables)
    return CopyReport(rows=row_counts(target), copied=copied)


def _copy_table(
    source: Engine, target: Engine, table: Table, batch: int, progress: Progress | None
) -> int:
    key = list(table.primary_key.columns)
    key_of = tuple_(*key) if len(key) > 1 else key[0]
    with target.connect() as conn:
        last = conn.execute(select(*key).order_by(*(c.desc() for c in key)).limit(1)).first()
    with source.connect() as conn:
        total = int(conn.scalar(select(func.count()).select_from(table)) or 0)

    def bound(values: tuple) -> object:
        return tuple_(*values) if len(key) > 1 else values[0]

    done = 0
    if last is not None:
        with source.connect() as conn:
            done = int(
                conn.scalar(
                    select(func.count()).select_from(table).where(key_of <= bound(tuple(last)))
                )
                or 0
            )
    if progress:
        progress(table.name, done, total)
    copied = 0
    while True:
        query = select(table).order_by(*key).limit(batch)
        if last is not None:
            query = query.where(key_of > bound(tuple(last)))
        with source.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        if not rows:
            return copied
        with target.begin() as conn:
            conn.execute(table.insert(), rows)
        last = tuple(rows[-1][c.name] for c in key)
        copied += len(rows)
        done += len(rows)
        if progress:
            progress(table.name, done, max(done, total))
