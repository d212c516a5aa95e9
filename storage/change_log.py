"""The index change log and the profiles it points at: everything the gallery reads.

Every profile change appends an ``index_changes`` row in the same transaction as the change
(``storage.speakers``); the in-memory FAISS indexes replay that log
(:meth:`ChangeLog.changes_since`) and rebuild from the profiles
(:meth:`ChangeLog.iter_profiles`). Profiles are filtered to the *currently loaded* model of each
space (``model_identities``), so an index never mixes two models' vectors.

``SpeakerStore`` is a ``ChangeLog`` (it writes the log); the gallery depends on this class alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    JSON,
    Select,
    String,
    and_,
    cast,
    delete,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import InvalidEmbeddingError
from storage.models import DatabaseIdentity, IndexChange, IndexState, Profile, Speaker, utcnow
from storage.records import ChangeCursor, SpeakerBrief
from storage.tx import Transactions
from storage.vectors import VECTOR_DTYPE, decode_vector

T = TypeVar("T")


class ChangeLog(Transactions):
    def __init__(
        self, session_factory: sessionmaker[Session], model_identities: Mapping[str, str]
    ) -> None:
        """``model_identities``: space -> identity of the loaded model (profiles of any other
        model are invisible here)."""
        super().__init__(session_factory)
        self.model_identities: dict[str, str] = dict(model_identities)

    def _cursor_selects(self) -> list[Select[Any]]:
        """(kind, space, value, horizon, NULL, NULL) rows: kind 0 = newest seq, kind 1 = one
        space's generation and compaction horizon."""
        return [
            select(
                literal(0).label("kind"),
                cast(null(), String).label("text"),
                func.coalesce(func.max(IndexChange.seq), 0).label("a"),
                literal(0).label("b"),
                cast(null(), String).label("name"),
                cast(null(), JSON).label("meta"),
            ),
            select(
                literal(1),
                IndexState.space,
                IndexState.generation,
                IndexState.log_horizon,
                cast(null(), String),
                cast(null(), JSON),
            ),
        ]

    @staticmethod
    def _cursor_of(rows: Iterable[Any]) -> ChangeCursor:
        seq = 0
        generations: dict[str, int] = {}
        horizons: dict[str, int] = {}
        for row in rows:
            if row[0] == 0:
                seq = int(row[2] or 0)
            elif row[0] == 1:
                generations[row[1]] = int(row[2])
                horizons[row[1]] = int(row[3] or 0)
        return ChangeCursor(seq=seq, generations=generations, horizons=horizons)

    def change_cursor(self) -> ChangeCursor:
        """Newest change ``seq``, every space's generation and compaction horizon, in ONE
        indexed query (runs before searches, so it stays on Core and a bare connection)."""
        query = union_all(*self._cursor_selects())

        def run() -> ChangeCursor:
            with self.engine.connect() as conn:
                return self._cursor_of(conn.execute(query).all())

        return self.with_retries(run)

    def cursor_and_briefs(self, ids: list[int]) -> tuple[ChangeCursor, dict[int, SpeakerBrief]]:
        """The change cursor AND the public fields of speakers ``ids`` in ONE query: what a
        search answer needs from the database (``service.search.gallery.Gallery.search_briefs``
        checks with the cursor that the index it searched was current). Unknown ids (deleted
        meanwhile) are absent."""
        wanted = sorted({int(i) for i in ids})
        speakers = select(
            literal(2).label("kind"),
            Speaker.external_id,
            Speaker.id,
            literal(0),
            Speaker.name,
            Speaker.meta,
        ).where(Speaker.id.in_(wanted))
        query = union_all(speakers, *self._cursor_selects())

        def run() -> tuple[ChangeCursor, dict[int, SpeakerBrief]]:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            briefs = {
                int(row[2]): SpeakerBrief(int(row[2]), row[1], row[4], dict(row[5] or {}))
                for row in rows
                if row[0] == 2
            }
            return self._cursor_of(rows), briefs

        return self.with_retries(run)

    def database_identity(self) -> str | None:
        """The database's UUID (written by migration 0005), or None if it has none."""
        return self.read_transaction(
            lambda s: s.scalar(select(DatabaseIdentity.uuid).where(DatabaseIdentity.id == 1))
        )

    def log_row(self, space: str, seq: int) -> list[Any] | None:
        """Fingerprint of the log at ``seq`` for ``space``: ``[seq, created_at]`` of its newest
        change row at or below ``seq`` (None: no such row). A snapshot records it; a restored
        older database whose log was then written past the snapshot's seq has other rows there,
        so the snapshot is recognised as foreign. Compaction keeps this row (``compact``)."""

        def tx(session: Session) -> list[Any] | None:
            row = session.execute(
                select(IndexChange.seq, IndexChange.created_at)
                .where(IndexChange.space == space, IndexChange.seq <= seq)
                .order_by(IndexChange.seq.desc())
                .limit(1)
            ).first()
            return None if row is None else [int(row[0]), row[1].isoformat()]

        return self.read_transaction(tx)

    def compact(self, space: str, below_seq: int, *, keep_s: float) -> int:
        """Delete ``space``'s change rows with seq < ``below_seq`` that are older than
        ``keep_s`` seconds, never the newest row of the whole log (the cursor), and raise the
        space's horizon to the newest deleted seq. Returns how many rows were deleted.

        The caller passes the seq of the fingerprint row of the oldest snapshot that must stay
        usable (``log_row``); see ``service.search.gallery`` for the rule."""
        cutoff = utcnow() - timedelta(seconds=keep_s)

        def tx(session: Session) -> int:
            newest = int(session.scalar(select(func.coalesce(func.max(IndexChange.seq), 0))) or 0)
            limit = min(int(below_seq), newest)
            doomed = select(func.max(IndexChange.seq), func.count()).where(
                IndexChange.space == space,
                IndexChange.seq < limit,
                IndexChange.created_at < cutoff,
            )
            top, count = session.execute(doomed).one()
            if not count:
                return 0
            session.execute(
                delete(IndexChange).where(
                    IndexChange.space == space,
                    IndexChange.seq <= int(top),
                    IndexChange.created_at < cutoff,
                )
            )
            state = session.get(IndexState, space)
            if state is None:
                session.add(IndexState(space=space, generation=0, log_horizon=int(top)))
            else:
                state.log_horizon = max(int(state.log_horizon or 0), int(top))
            return int(count)

        return self.write_transaction(tx)

    def pending_changes(self, space: str, seq: int) -> int:
        """How many change rows of ``space`` are newer than ``seq`` (decides replay vs rebuild)."""

        def tx(session: Session) -> int:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(IndexChange)
                    .where(IndexChange.space == space, IndexChange.seq > seq)
                )
                or 0
            )

        return self.read_transaction(tx)

    def changes_since(
        self, space: str, seq: int, *, limit: int | None = None
    ) -> tuple[int, list[tuple[int, np.ndarray | None]]]:
        """Changes of ``space`` after ``seq``, compacted to each speaker's *current* state.

        Returns ``(new_seq, [(speaker_id, profile or None)])``: ``None`` means "not in the index"
        (deleted, or no profile made by the loaded model). ``new_seq`` is the global newest seq
        as of this read (so a space with no changes still moves forward), or — when ``limit``
        cut the window — the seq of the last change row included; call again from there.
        Correctness relies on seqs becoming visible in commit order: SQLite has one writer at a
        time, PostgreSQL writers take one advisory lock (``storage.dialects``).
        """
        identity = self.model_identities.get(space)

        def tx(session: Session) -> tuple[int, list[tuple[int, np.ndarray | None]]]:
            upper = int(session.scalar(select(func.coalesce(func.max(IndexChange.seq), 0))) or 0)
            if limit is not None:
                cut = session.scalar(
                    select(IndexChange.seq)
                    .where(IndexChange.space == space, IndexChange.seq > seq)
                    .order_by(IndexChange.seq)
                    .offset(limit - 1)
                    .limit(1)
                )
                if cut is not None and cut < upper:
                    upper = int(cut)
            if upper <= seq:
                return max(seq, upper), []
            changed = (
                select(IndexChange.speaker_id)
                .where(
                    IndexChange.space == space,
                    IndexChange.seq > seq,
                    IndexChange.seq <= upper,
                )
                .distinct()
                .subquery()
            )
            rows = session.execute(
                select(changed.c.speaker_id, Profile.vector, Profile.model_identity)
                .select_from(changed)
                .outerjoin(
                    Profile,
                    and_(Profile.speaker_id == changed.c.speaker_id, Profile.space == space),
                )
                .order_by(changed.c.speaker_id)
            ).all()
            out: list[tuple[int, np.ndarray | None]] = []
            for speaker_id, blob, model_identity in rows:
                usable = blob is not None and model_identity == identity
                out.append((int(speaker_id), decode_vector(blob) if usable else None))
            return upper, out

        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1")
        return self.read_transaction(tx)

    def iter_profiles(
        self, space: str, batch_size: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every profile of ``space`` made by the loaded model, in id order, as batches of
        ``(ids int64 (n,), vectors float32 (n, dim))``. Each batch is its own short read
        (keyset paging), so a long scan never pins an old WAL snapshot; callers that need a
        consistent picture take ``change_cursor()`` first and replay changes after it."""
        identity = self.model_identities.get(space)
        if identity is None:
            return
        last_id = -1
        while True:
            rows = self.read_transaction(
                lambda s, after=last_id: s.execute(
                    select(Profile.speaker_id, Profile.vector)
                    .where(
                        Profile.space == space,
                        Profile.model_identity == identity,
                        Profile.speaker_id > after,
                    )
                    .order_by(Profile.speaker_id)
                    .limit(batch_size)
                ).all()
            )
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            width = len(rows[0][1])
            if any(len(r[1]) != width for r in rows):
                raise InvalidEmbeddingError(f"{space} profiles disagree on dimension")
            vectors = (
                np.frombuffer(b"".join(r[1] for r in rows), dtype=VECTOR_DTYPE)
                .reshape(len(rows), width // VECTOR_DTYPE.itemsize)
                .astype(np.float32)
            )
            yield ids, vectors
            last_id = int(ids[-1])
            if len(rows) < batch_size:
                return

    def profile_count(self, space: str) -> int:
        identity = self.model_identities.get(space)
        if identity is None:
            return 0
        return self.read_transaction(
            lambda s: int(
                s.scalar(
                    select(func.count())
                    .select_from(Profile)
                    .where(Profile.space == space, Profile.model_identity == identity)
                )
                or 0
            )
        )

    def holding_write_lock(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` while holding the writers' lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL's
        advisory lock) in an otherwise empty transaction: no change can commit meanwhile, so
        ``fn`` reads a log nobody extends, and two holders never interleave. Used to replay the
        log into a store shared by several processes (Milvus), where two replays racing could
        write an older profile over a newer one. ``fn`` may read through this store (other
        connections) but must not write through it (it would wait for its own lock)."""
        return self.write_transaction(lambda _session: fn())

    def bump_generation(self, space: str) -> int:
        def tx(session: Session) -> int:
            state = session.get(IndexState, space)
            if state is None:
                state = IndexState(space=space, generation=1)
                session.add(state)
            else:
                state.generation += 1
            session.flush()
            return state.generation

        return self.write_transaction(tx)
