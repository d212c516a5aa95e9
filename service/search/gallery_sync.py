"""Keeping one space's in-memory index in step with the database's change log.

Pure helpers of :class:`service.search.gallery.Gallery`: they read the change log
(``storage.change_log.ChangeLog``) and change the :class:`SpaceState` they are given; locking
and deciding *when* to catch up or rebuild is the gallery's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from index.spec import IndexSpec
from index.vector_index import VectorIndex
from storage.change_log import ChangeLog

logger = logging.getLogger(__name__)

#: Times a build from the database is retried when the log was compacted under it.
_BUILD_ATTEMPTS = 3


class LogCompacted(Exception):
    """The changes an index needs to catch up were deleted by log compaction: reload it."""


@dataclass
class SpaceState:
    """One space's index and how far into the change log it reaches."""

    index: VectorIndex
    seq: int  # last change-log seq reflected in ``index``
    generation: int  # rebuild generation the index was built/loaded for
    unsaved: int = 0  # changes applied since the last snapshot


def apply_changes(index: VectorIndex, changes: list[tuple[int, np.ndarray | None]]) -> None:
    """Apply compacted changes (``ChangeLog.changes_since``): ``None`` removes, a vector upserts."""
    removed = [speaker_id for speaker_id, vector in changes if vector is None]
    upserts = [(speaker_id, vector) for speaker_id, vector in changes if vector is not None]
    if removed:
        index.remove(np.asarray(removed, dtype=np.int64))
    if upserts:
        index.upsert(
            np.asarray([i for i, _ in upserts], dtype=np.int64),
            np.stack([v for _, v in upserts]),
        )


def catch_up(
    log: ChangeLog, space: str, state: SpaceState, target_seq: int, *, chunk: int, horizon: int
) -> int:
    """Replay the log into ``state`` until its seq reaches ``target_seq``, ``chunk`` changes per
    round trip; returns how many speakers were touched. Raises :class:`LogCompacted` when the
    log no longer holds the changes after ``state.seq`` (``horizon``: the space's newest
    deleted seq, from the cursor)."""
    if state.seq < target_seq and state.seq < horizon:
        raise LogCompacted(f"index at seq {state.seq}, log compacted up to {horizon}")
    touched = 0
    while state.seq < target_seq:
        new_seq, changes = log.changes_since(space, state.seq, limit=chunk)
        if new_seq <= state.seq:
            break  # nothing newer is visible (cannot happen with a single writer)
        apply_changes(state.index, changes)
        state.seq = new_seq
        touched += len(changes)
    state.unsaved += touched
    return touched


def build_from_log(
    log: ChangeLog,
    space: str,
    dim: int,
    spec: IndexSpec,
    *,
    chunk: int,
    progress: Callable[[int, int], None] | None = None,
) -> SpaceState:
    """A fresh index of every current-model profile, trained if its kind needs it, caught up
    with the log. ``spec`` may be ``auto``: the gallery size decides the kind.

    The cursor is read *before* the scan: the scan reflects at least that state, and
    replaying every change after it (idempotent: each replay sets the speaker's current
    profile) covers whatever the scan missed or saw half of. If the log was compacted past
    that cursor meanwhile (another process wrote a newer snapshot), the replay would miss
    changes: the build starts again.
    """
    for attempt in range(_BUILD_ATTEMPTS):
        cursor = log.change_cursor()
        total = log.profile_count(space)
        index = VectorIndex(dim, spec=spec.resolve(total))
        done = 0
        if progress:
            progress(0, total)
        for ids, vectors in log.iter_profiles(space):
            # Keyset order: strictly increasing, unique ids into an empty index.
            index.add(ids, vectors, assume_new=True)
            done += ids.size
            if progress:
                progress(done, max(total, done))
        index.prepare()
        state = SpaceState(index=index, seq=cursor.seq, generation=cursor.generation(space))
        now = log.change_cursor()
        try:
            catch_up(log, space, state, now.seq, chunk=chunk, horizon=now.horizon(space))
        except LogCompacted:
            logger.info("index %s: log compacted during the build, again (%d)", space, attempt)
            continue
        return state
    raise LogCompacted(f"index {space}: the log kept being compacted during the build")
