"""Operator work on the gallery's indexes: rebuild one space from the database, verify them all.

``verify_index`` reads any index through :class:`IndexedVectors` (FAISS here, Milvus in
``service.search.milvus_gallery``).

``voicesearch index rebuild`` / ``verify`` reach these through ``Gallery.rebuild`` and
``Gallery.verify``, which hold the gallery's locks and install what is built here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from index.vector_index import VectorIndex
from service.search.gallery_sync import SpaceState
from service.search.snapshots import SnapshotFiles
from storage.change_log import ChangeLog

logger = logging.getLogger(__name__)

_SAMPLE = 100  # ids listed per category in a VerifyReport


@dataclass(frozen=True)
class RebuildReport:
    space: str
    count: int
    generation: int
    seq: int
    seconds: float
    snapshot: Path | None  # None: a store without snapshot files (Milvus)


@dataclass(frozen=True)
class VerifyReport:
    space: str
    db_count: int
    index_count: int
    missing: int  # profiles in the database but not in the index
    extra: int  # ids in the index without a (current-model) profile in the database
    mismatched: int  # present in both, vectors differ by more than the tolerance
    missing_ids: list[int] = field(default_factory=list)  # first ids of each kind
    extra_ids: list[int] = field(default_factory=list)
    mismatched_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.mismatched == 0

    def __str__(self) -> str:
        status = "ok" if self.ok else "MISMATCH"
        text = (
            f"{status}: db={self.db_count} index={self.index_count} missing={self.missing} "
            f"extra={self.extra} mismatched={self.mismatched}"
        )
        for label, ids in (
            ("missing", self.missing_ids),
            ("extra", self.extra_ids),
            ("mismatched", self.mismatched_ids),
        ):
            if ids:
                text += f" {label}_ids={ids[:10]}"
        return text


def rebuild_space(
    log: ChangeLog,
    files: SnapshotFiles,
    space: str,
    *,
    build: Callable[[], SpaceState],
    snapshot_parts: Callable[[SpaceState], tuple[dict[str, Any], list[Any]]],
    lock_timeout_s: float,
    install: Callable[[SpaceState], None],
) -> RebuildReport:
    """Rebuild ``space`` from the database (``build``), save the snapshot, then bump the
    generation so every running worker reloads (from this snapshot: it already carries the new
    number); ``install`` hands the fresh state to this process's gallery."""
    started = time.perf_counter()
    with files.lock(space, lock_timeout_s) as locked:
        if not locked:
            logger.warning("index %s: file lock busy, rebuilding without it", space)
        state = build()
        state.generation += 1  # the value bump_generation will return, barring a race
        files.write(space, *snapshot_parts(state))
        generation = log.bump_generation(space)
        if generation != state.generation:
            # Someone else bumped at the same moment: re-label so workers can load it.
            state.generation = generation
            files.write(space, *snapshot_parts(state))
        state.unsaved = 0
    install(state)
    report = RebuildReport(
        space=space,
        count=state.index.ntotal,
        generation=state.generation,
        seq=state.seq,
        seconds=time.perf_counter() - started,
        snapshot=files.path(space),
    )
    logger.info(
        "index %s: rebuilt %d vectors (%s) in %.2fs (generation %d)",
        space,
        report.count,
        state.index.spec.kind,
        report.seconds,
        report.generation,
    )
    return report


class IndexedVectors(Protocol):
    """What ``verify_index`` reads of an index: FAISS (:class:`FaissVectors`) or Milvus."""

    @property
    def count(self) -> int: ...

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(present mask, vectors of the present ids in order)``."""
        ...

    def all_ids(self) -> np.ndarray: ...


@dataclass(frozen=True)
class FaissVectors:
    index: VectorIndex

    @property
    def count(self) -> int:
        return self.index.ntotal

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        present = self.index.contains(ids)
        if not present.any():
            return present, np.empty((0, self.index.dim), dtype=np.float32)
        return present, self.index.reconstruct(ids[present])

    def all_ids(self) -> np.ndarray:
        return self.index.ids()


def verify_index(
    log: ChangeLog, space: str, index: IndexedVectors, *, tolerance: float
) -> VerifyReport:
    """Compare one index with the database: missing ids, extra ids, vectors that differ by more
    than ``tolerance`` (max abs)."""
    db_ids: list[np.ndarray] = []
    missing: list[np.ndarray] = []
    mismatched: list[np.ndarray] = []
    for ids, vectors in log.iter_profiles(space):
        db_ids.append(ids)
        present, stored = index.lookup(ids)
        missing.append(ids[~present])
        if present.any():
            if stored.shape[1] != vectors.shape[1]:
                mismatched.append(ids[present])
                continue
            diff = np.abs(stored - vectors[present]).max(axis=1)
            mismatched.append(ids[present][diff > tolerance])
    all_db = np.concatenate(db_ids) if db_ids else np.empty(0, dtype=np.int64)
    extra = np.setdiff1d(index.all_ids(), all_db)
    miss = np.concatenate(missing) if missing else np.empty(0, dtype=np.int64)
    bad = np.concatenate(mismatched) if mismatched else np.empty(0, dtype=np.int64)
    return VerifyReport(
        space=space,
        db_count=int(all_db.size),
        index_count=index.count,
        missing=int(miss.size),
        extra=int(extra.size),
        mismatched=int(bad.size),
        missing_ids=miss[:_SAMPLE].tolist(),
        extra_ids=extra[:_SAMPLE].tolist(),
        mismatched_ids=bad[:_SAMPLE].tolist(),
    )
