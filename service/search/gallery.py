"""One in-memory FAISS index per encoder space, kept in step with SQLite across processes.

SQLite is the source of truth; each process holds its own ``VectorIndex`` per space and the
``seq`` of the last ``index_changes`` row it applied. Before every search :meth:`Gallery.sync`
runs ONE query (``ChangeLog.change_cursor``: newest seq + per-space generations) and replays
only what changed since — so a write through any worker is visible to the very next search in
every worker (read-your-writes), without reloading anything.

Snapshots (``<snapshot_dir>/<space>.faiss``, format in ``index.vector_index``) only make start-up
fast: on open a process loads the snapshot and replays the log after its seq. A missing,
corrupt or inconsistent snapshot (other model identity, other rebuild generation, seq ahead of
the database, vector count that disagrees with the database) is rebuilt from the database and
the reason is returned/logged.

Cross-process coordination uses a per-space file lock (``.<space>.lock``) around "load or
rebuild", ``rebuild`` and snapshot writes, so N workers starting on an empty snapshot dir do one
rebuild, not N, and a stale worker never overwrites a fresher snapshot from ``index rebuild``.
Within a process one lock serialises sync, search and index changes. Lock order is always
"gallery lock, then file lock" (or only one of them), never the reverse, so they cannot deadlock.

:class:`Gallery` is the front: it owns the per-space states and the locks, and decides when to
load, catch up, rebuild or snapshot. The work itself is in ``gallery_sync`` (change-log replay),
``snapshots`` (files and file locks) and ``gallery_admin`` (rebuild, verify).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.errors import IndexCorruptError
from index.vector_index import IndexSpec
from service.core.errors import UnknownSpace
from service.search.gallery_admin import RebuildReport, VerifyReport, rebuild_space, verify_index
from service.search.gallery_sync import SpaceState, build_from_log, catch_up
from service.search.snapshots import SnapshotFiles, meta_problem, snapshot_meta
from storage.change_log import ChangeLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    speaker_id: int
    score: float


class Gallery:
    #: Changes replayed per ``changes_since`` round trip (bounds memory on a big backlog).
    replay_chunk = 50_000
    #: A backlog bigger than this (and than half the index) is rebuilt rather than replayed.
    rebuild_backlog = 200_000
    #: How long a process waits for another one's rebuild/snapshot of the same space.
    file_lock_timeout_s = 600.0
    #: Snapshot writes are optional work: give up quickly if another process holds the lock.
    snapshot_lock_timeout_s = 5.0
    #: Vectors differing by more than this (max abs) count as mismatched in ``verify``.
    verify_tolerance = 1e-5
    #: OpenMP threads per search. 1: a request-sized search is memory-bound and gains nothing
    #: from more threads, while OpenMP barriers on a CPU shared with model inference and other
    #: workers cost a lot — measured on 2 cores, 100k x 192: 5 ms with 1 thread, 40 ms with 2.
    #: Parallelism comes from worker processes. ``None``: FAISS's default (all cores).
    search_threads: int | None = 1

    def __init__(
        self,
        store: ChangeLog,
        snapshot_dir: Path,
        dims: Mapping[str, int],
        model_identities: Mapping[str, str],
        *,
        snapshot_every: int = 1000,
        index_spec: IndexSpec | None = None,
    ) -> None:
        for space in dims:
            if space not in model_identities:
                raise ValueError(f"no model identity given for space {space!r}")
            if store.model_identities.get(space) != model_identities[space]:
                # The store decides which embeddings make profiles; both must mean one model.
                raise ValueError(f"store and gallery disagree on the model of space {space!r}")
        self.store = store
        self.files = SnapshotFiles(snapshot_dir)
        self.snapshot_dir = self.files.snapshot_dir
        self.dims: dict[str, int] = dict(dims)
        self.model_identities: dict[str, str] = {s: model_identities[s] for s in dims}
        self.snapshot_every = int(snapshot_every)
        #: Which FAISS index every space uses (flat = exact, hnsw = approximate).
        self.index_spec = index_spec or IndexSpec()
        self._lock = threading.RLock()
        self._spaces: dict[str, SpaceState] = {}
        self._opened = False

    def snapshot_path(self, space: str) -> Path:
        return self.files.path(space)

    def _check_space(self, space: str) -> None:
        if space not in self.dims:
            raise UnknownSpace(
                f"unknown encoder space {space!r}", details={"known": sorted(self.dims)}
            )

    # ------------------------------------------------------------------ open / reload
    def open(self) -> dict[str, str]:
        """Load or rebuild every space's index; returns ``{space: how it was opened}``."""
        with self._lock:
            how: dict[str, str] = {}
            for space in self.dims:
                how[space] = self._open_space(space)
                logger.info("index %s: %s", space, how[space])
            self._opened = True
            return how

    def _ensure_open(self) -> None:
        if not self._opened:
            self.open()

    def _open_space(self, space: str) -> str:
        """Load the snapshot and catch up, or rebuild from the database (and save). Caller holds
        ``self._lock``; takes the space's file lock so concurrent workers rebuild once."""
        with self.files.lock(space, self.file_lock_timeout_s) as locked:
            if not locked:
                logger.warning("index %s: file lock busy, opening without it", space)
            cursor = self.store.change_cursor()
            try:
                index, meta = self.files.load(space)
            except FileNotFoundError:
                return self._rebuild_and_install(space, "rebuilt from database: no snapshot")
            except (IndexCorruptError, OSError) as error:
                logger.warning("index %s: snapshot unusable: %s", space, error)
                return self._rebuild_and_install(
                    space, f"rebuilt from database: corrupt snapshot ({error})"
                )
            problem = meta_problem(
                space,
                meta,
                cursor,
                dim=self.dims[space],
                model_identity=self.model_identities[space],
                index_spec=self.index_spec,
            )
            if problem:
                logger.warning("index %s: snapshot not used: %s", space, problem)
                return self._rebuild_and_install(space, f"rebuilt from database: {problem}")

            index.set_runtime_options(self.index_spec)
            state = SpaceState(index=index, seq=int(meta["seq"]), generation=meta["generation"])
            replayed = self._catch_up(space, state, cursor.seq)
            # Counts must agree; a concurrent writer can make them differ for a moment, so
            # catch up once more before concluding the snapshot is wrong.
            for attempt in range(2):
                db_count = self.store.profile_count(space)
                if db_count == index.ntotal:
                    break
                if attempt == 0:
                    replayed += self._catch_up(space, state, self.store.change_cursor().seq)
            else:
                return self._rebuild_and_install(
                    space,
                    f"rebuilt from database: snapshot + log hold {index.ntotal} vectors, "
                    f"database has {db_count} profiles",
                )
            self._spaces[space] = state
            return (
                f"loaded snapshot (seq {meta['seq']}, {meta['count']} vectors), "
                f"replayed {replayed} changes → {index.ntotal} vectors"
            )

    def _rebuild_and_install(self, space: str, reason: str) -> str:
        """Build from the database, install, and save a snapshot (caller holds both locks)."""
        state = self._build(space)
        self._spaces[space] = state
        self.files.save(space, state, self.model_identities[space])
        return f"{reason} ({state.index.ntotal} vectors)"

    def _build(self, space: str, progress: Callable[[int, int], None] | None = None) -> SpaceState:
        return build_from_log(
            self.store,
            space,
            self.dims[space],
            self.index_spec,
            chunk=self.replay_chunk,
            progress=progress,
        )

    # ------------------------------------------------------------------ change replay
    def _catch_up(self, space: str, state: SpaceState, target_seq: int) -> int:
        return catch_up(self.store, space, state, target_seq, chunk=self.replay_chunk)

    def _sync_locked(self) -> None:
        self._ensure_open()
        cursor = self.store.change_cursor()
        for space, state in list(self._spaces.items()):
            if cursor.generation(space) != state.generation:
                how = self._open_space(space)
                logger.info("index %s: generation changed, reloaded: %s", space, how)
                continue
            if cursor.seq <= state.seq:
                continue
            backlog = cursor.seq - state.seq  # upper bound of this space's pending rows
            if backlog > self.rebuild_backlog:
                pending = self.store.pending_changes(space, state.seq)
                if pending > max(self.rebuild_backlog, state.index.ntotal // 2):
                    # Replaying e.g. a million bulk inserts one chunk at a time is slower than
                    # reading the profiles once.
                    logger.info("index %s: %d pending changes, rebuilding", space, pending)
                    fresh = self._build(space)
                    fresh.unsaved = pending
                    self._spaces[space] = fresh
                    continue
            self._catch_up(space, state, cursor.seq)

    def sync(self) -> None:
        """Bring every index up to date with the database: one cheap query when nothing changed,
        the changed profiles when something did, a reload after a rebuild elsewhere."""
        with self._lock:
            self._sync_locked()

    # ------------------------------------------------------------------ queries
    def search(self, space: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` speakers per query row (a 1-D vector is one query), best first. The
        index is synced first, so every committed write is visible. Empty index → ``[[]...]``."""
        self._check_space(space)
        with self._lock:
            self._sync_locked()
            scores, ids = self._spaces[space].index.search(vectors, k, threads=self.search_threads)
        return [
            [Hit(int(i), float(s)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]

    def vectors(self, space: str, ids: np.ndarray) -> np.ndarray:
        """Indexed vectors of ``ids`` (float32 (n, dim)), as of the last sync; ids no longer
        indexed give rows of NaN (read-only, for score normalisation)."""
        self._check_space(space)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.full((ids.size, self.dims[space]), np.nan, dtype=np.float32)
        with self._lock:
            index = self._spaces[space].index
            present = index.contains(ids) if ids.size else np.zeros(0, bool)
            if present.any():
                out[present] = index.reconstruct(ids[present])
        return out

    def version(self, space: str) -> tuple[int, int]:
        """``(generation, seq)`` of the space's index as last synced: moves on every change."""
        self._check_space(space)
        with self._lock:
            state = self._spaces[space]
            return state.generation, state.seq

    def size(self, space: str) -> int:
        self._check_space(space)
        with self._lock:
            self._sync_locked()
            return self._spaces[space].index.ntotal

    # ------------------------------------------------------------------ snapshots
    def maybe_snapshot(self) -> None:
        """Snapshot every space with at least ``snapshot_every`` unsaved changes."""
        with self._lock:
            self._sync_locked()
            due = [s for s, st in self._spaces.items() if st.unsaved >= self.snapshot_every]
        for space in due:
            self.snapshot(space)

    def snapshot(self, space: str | None = None) -> None:
        """Write the snapshot of ``space`` (default: every space) now."""
        spaces = [space] if space is not None else list(self.dims)
        for name in spaces:
            self._check_space(name)
            # Copy under the gallery lock (searches wait only for the copy), write without it.
            with self._lock:
                self._sync_locked()
                state = self._spaces[name]
                blob = state.index.serialize()
                meta = snapshot_meta(name, state, self.model_identities[name])
                count, unsaved = state.index.ntotal, state.unsaved
            with self.files.lock(name, self.snapshot_lock_timeout_s) as locked:
                if not locked:
                    logger.info("index %s: snapshot skipped, another process holds the lock", name)
                    continue
                if self.store.change_cursor().generation(name) != state.generation:
                    continue  # a rebuild happened meanwhile; its snapshot is the one to keep
                self.files.write(name, meta, blob, dim=state.index.dim, count=count)
            with self._lock:
                if self._spaces.get(name) is state:
                    state.unsaved = max(0, state.unsaved - unsaved)

    # ------------------------------------------------------------------ admin
    def rebuild(
        self, space: str, progress: Callable[[int, int], None] | None = None
    ) -> RebuildReport:
        """Rebuild ``space`` from the database, save the snapshot, then bump the generation so
        every running worker reloads (``gallery_admin.rebuild_space``)."""
        self._check_space(space)

        def install(state: SpaceState) -> None:
            with self._lock:
                current = self._spaces.get(space)
                if current is None or current.generation <= state.generation:
                    self._spaces[space] = state

        return rebuild_space(
            self.store,
            self.files,
            space,
            dim=self.dims[space],
            spec=self.index_spec,
            model_identity=self.model_identities[space],
            lock_timeout_s=self.file_lock_timeout_s,
            replay_chunk=self.replay_chunk,
            install=install,
            progress=progress,
        )

    def verify(self) -> dict[str, VerifyReport]:
        """Compare every index with the database: missing ids, extra ids, differing vectors.

        Holds the gallery lock for the scan (searches in this process wait); writes committed
        by other processes during the scan can show up as transient differences — run it again.
        """
        reports: dict[str, VerifyReport] = {}
        with self._lock:
            self._sync_locked()
            for space, state in self._spaces.items():
                reports[space] = verify_index(
                    self.store, space, state.index, tolerance=self.verify_tolerance
                )
        return reports
