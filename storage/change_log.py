"""The index change log and the profiles it points at: everything the gallery reads.

Every profile change appends an ``index_changes`` row in the same transaction as the change
(``storage.speakers``); the in-memory FAISS indexes replay that log
(:meth:`ChangeLog.changes_since`) and rebuild from the profiles
(:meth:`ChangeLog.iter_profiles`). Profiles are filtered to the *currently loaded* model of each
space (``model_identities``), so an index never mixes two models' vectors.

``SpeakerStore`` is a ``ChangeLog`` (it writes the log); the gallery depends on this class alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
from sqlalchemy import String, and_, cast, func, null, select, union_all
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import InvalidEmbeddingError
from storage.models import IndexChange, IndexState, Profile
from storage.records import ChangeCursor
from storage.tx import Transactions
from storage.vectors import VECTOR_DTYPE, decode_vector


class ChangeLog(Transactions):
    def __init__(
        self, session_factory: sessionmaker[Session], model_identities: Mapping[str, str]
    ) -> None:
        """``model_identities``: space -> identity of the loaded model (profiles of any other
        model are invisible here)."""
        super().__init__(session_factory)
        self.model_identities: dict[str, str] = dict(model_identities)

    def change_cursor(self) -> ChangeCursor:
        """Newest change ``seq`` and every space's generation, in ONE indexed query (runs before
        every search, so it stays on Core and a bare connection)."""
        query = union_all(
            select(
                cast(null(), String).label("space"),
                func.coalesce(func.max(IndexChange.seq), 0).label("value"),
            ),
            select(IndexState.space, IndexState.generation),
        )

        def run() -> ChangeCursor:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            seq = 0
            generations: dict[str, int] = {}
            for space, value in rows:
                if space is None:
                    seq = int(value or 0)
                else:
                    generations[space] = int(value)
            return ChangeCursor(seq=seq, generations=generations)

        return self.with_retries(run)

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
