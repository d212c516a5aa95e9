"""One in-memory index per encoder space, kept in step with SQLite across processes.

(Longer than the ~400 lines a module here usually gets, on purpose: every method below takes
the gallery lock and/or a file lock, and the lock-order rule at the end of this docstring is
only checkable while all of them sit in one file. The work itself is in ``gallery_sync``,
``gallery_jobs``, ``snapshots`` and ``gallery_admin``.)

SQLite is the source of truth; each process holds its own ``VectorIndex`` per space and the
``seq`` of the last ``index_changes`` row it applied. A search checks with ONE query that no
change it has not applied exists (:meth:`Gallery.search_briefs`: the change cursor comes back
with the hits' speakers; only when it moved does the gallery catch up and search again), so a
write through any worker is visible to the very next search in every worker.

Snapshots (``<snapshot_dir>/<space>.faiss``) make start-up fast: a process opens the snapshot
(a fastscan index's vectors are memory-mapped, not read) and replays the log after its seq. A
missing, corrupt or foreign snapshot (``snapshots.meta_problem``) is rebuilt from the database.

Nothing slow happens while searches wait. Rebuilds (tombstones piling up, a quantiser to
train, the index kind ``auto`` switching), reloads after ``voicesearch index rebuild`` in
another process and the full check of a memory-mapped snapshot run as background jobs
(``gallery_jobs``) that build a fresh index beside the live one, catch it up and swap it in;
the live index keeps serving, caught up from the log as usual. :meth:`Gallery.size` reads a
number (no lock, no database). Only a log that no longer holds what the index needs (the
database went backwards, or compaction outran an idle process) makes a search wait for a
reload, because serving that index would be wrong.

Snapshots are written by one process at a time (the space's file lock) and only when the file
on disk is older than what the writer holds, so N workers do not write N identical copies.
After writing one, the writer compacts the change log: a space's rows older than the
fingerprint row of its snapshot (``ChangeLog.log_row``) and older than ``log_keep_s`` are
deleted, and the space's horizon records how far. The snapshot is the oldest starting point
any process can need (workers that lag behind it reload from it), and a build from the
database notices a horizon that passed its starting cursor and starts again.

Lock order: a file lock, then the gallery lock — never a file lock while holding the gallery
lock (jobs start after it is released), so they cannot deadlock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from index.errors import IndexCorruptError
from index.spec import IndexSpec
from service.core.errors import UnknownSpace
from service.search.gallery_admin import (
    FaissVectors,
    RebuildReport,
    VerifyReport,
    rebuild_space,
    verify_index,
)
from service.search.gallery_jobs import Jobs
from service.search.gallery_sync import LogCompacted, SpaceState, build_from_log, catch_up
from service.search.snapshots import SnapshotFiles, meta_problem, snapshot_meta
from service.search.vector_store import Hit, hits_of
from storage.change_log import ChangeLog
from storage.records import ChangeCursor, SpeakerBrief

logger = logging.getLogger(__name__)


class Gallery:
    #: Changes replayed per ``changes_since`` round trip (bounds memory on a big backlog).
    replay_chunk = 50_000
    #: A backlog bigger than this (and than half the index) is rebuilt rather than replayed.
    rebuild_backlog = 200_000
    #: How long a process waits for another one's rebuild/snapshot of the same space.
    file_lock_timeout_s = 600.0
    #: Snapshot writes are optional work: give up quickly if another process holds the lock.
    snapshot_lock_timeout_s = 5.0
    #: Change-log rows younger than this are never compacted away.
    log_keep_s = 600.0
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
        background: bool = True,
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
        #: Which index every space uses (flat, hnsw, fastscan, or auto by size).
        self.index_spec = index_spec or IndexSpec()
        self.jobs = Jobs(background=background)
        self._lock = threading.RLock()
        self._open_lock = threading.Lock()
        self._spaces: dict[str, SpaceState] = {}
        self._sizes: dict[str, int] = {}
        self._opened = False
        self._database: str | None = None

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
        with self._open_lock:
            how = self._open_locked()
        self.jobs.start_due()
        return how

    def _open_locked(self) -> dict[str, str]:
        self._database = self.store.database_identity()
        how: dict[str, str] = {}
        for space in self.dims:
            state, how[space] = self._load_or_build(space, use_snapshot=True)
            self._install(space, state)
            logger.info("index %s: %s", space, how[space])
        self._opened = True
        return how

    def _ensure_open(self) -> None:
        if self._opened:
            return
        with self._open_lock:
            if not self._opened:
                self._open_locked()
        self.jobs.start_due()

    def _try_snapshot(self, space: str, cursor: ChangeCursor) -> tuple[SpaceState | None, str]:
        """The space's snapshot, caught up with the log, if it is usable; else why not.
        Needs no lock: snapshot files are replaced atomically, never changed in place."""
        try:
            index, meta = self.files.load(space)
        except FileNotFoundError:
            return None, "no snapshot"
        except (IndexCorruptError, OSError) as error:
            logger.warning("index %s: snapshot unusable: %s", space, error)
            return None, f"corrupt snapshot ({error})"
        problem = meta_problem(
            space,
            meta,
            cursor,
            dim=self.dims[space],
            model_identity=self.model_identities[space],
            index_spec=self.index_spec,
            database=self._database,
            log_row=lambda seq: self.store.log_row(space, seq),
        )
        if problem:
            logger.warning("index %s: snapshot not used: %s", space, problem)
            return None, problem
        index.set_runtime_options(self.index_spec)
        state = SpaceState(index=index, seq=int(meta["seq"]), generation=meta["generation"])
        try:
            replayed = self._catch_up(space, state, cursor)
            # Counts must agree; a concurrent writer can make them differ for a moment, so
            # catch up once more before concluding the snapshot is wrong.
            for attempt in range(2):
                db_count = self.store.profile_count(space)
                if db_count == index.ntotal:
                    break
                if attempt == 0:
                    replayed += self._catch_up(space, state, self.store.change_cursor())
            else:
                return None, (
                    f"snapshot + log hold {index.ntotal} vectors, database has {db_count} profiles"
                )
        except LogCompacted as error:
            return None, str(error)
        if index.needs_rebuild:
            return None, f"snapshot index needs a rebuild: {index.needs_rebuild}"
        if not self.index_spec.accepts(index.spec.meta(), index.ntotal):
            # The snapshot's kind fitted its own size; after the log it may not (auto).
            return None, f"{index.ntotal} vectors: index type {index.spec.kind!r} no longer fits"
        if index.source is not None and index.source.pending:
            self.jobs.ask(space, "verify", lambda: self._verify_mapped(space, state))
        return state, (
            f"loaded snapshot (seq {meta['seq']}, {meta['count']} vectors, "
            f"{meta.get('index_type', 'flat')}), replayed {replayed} changes → "
            f"{index.ntotal} vectors"
        )

    def _load_or_build(self, space: str, *, use_snapshot: bool) -> tuple[SpaceState, str]:
        """Under the space's file lock (so N processes build once): the snapshot if usable,
        else a build from the database, saved as the new snapshot. No gallery lock held."""
        with self.files.lock(space, self.file_lock_timeout_s) as locked:
            if not locked:
                logger.warning("index %s: file lock busy, opening without it", space)
            else:
                self.files.remove_stale_temps(space)
            cursor = self.store.change_cursor()
            reason = "asked to rebuild"
            if use_snapshot:
                state, reason = self._try_snapshot(space, cursor)
                if state is not None:
                    return state, reason
            state = self._build(space)
            self._write_snapshot(space, state)
            return (
                state,
                f"rebuilt from database: {reason} "
                f"({state.index.ntotal} vectors, {state.index.spec.kind})",
            )

    def _install(self, space: str, state: SpaceState) -> None:
        """Make ``state`` the live index: caught up outside the lock first (it is not shared
        yet), then the last few changes and the swap under it."""
        for _ in range(3):
            try:
                self._catch_up(space, state, self.store.change_cursor())
                with self._lock:
                    self._catch_up(space, state, self.store.change_cursor())
                    self._spaces[space] = state
                    self._sizes[space] = state.index.ntotal
                return
            except LogCompacted:
                state, _ = self._load_or_build(space, use_snapshot=True)
        raise LogCompacted(f"index {space}: could not catch up a fresh index")

    def _refresh(self, space: str, *, use_snapshot: bool, why: str) -> None:
        """A job: a fresh index for ``space`` beside the live one (snapshot or database)."""
        state, how = self._load_or_build(space, use_snapshot=use_snapshot)
        self._install(space, state)
        logger.info("index %s: %s; swapped in: %s", space, why, how)

    def _verify_mapped(self, space: str, state: SpaceState) -> None:
        """A job: check every block of a memory-mapped snapshot that was only sampled at
        open; a bad one means the index is rebuilt from the database."""
        source = state.index.source
        if source is None:
            return
        try:
            source.verify_rest()
        except IndexCorruptError as error:
            logger.error("index %s: %s; rebuilding from the database", space, error)
            self._refresh(space, use_snapshot=False, why="snapshot failed its full check")
            return
        state.index.source = None
        logger.info("index %s: snapshot fully checked", space)

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
    def _catch_up(self, space: str, state: SpaceState, cursor: ChangeCursor) -> int:
        return catch_up(
            self.store,
            space,
            state,
            cursor.seq,
            chunk=self.replay_chunk,
            horizon=cursor.horizon(space),
        )

    def _sync_locked(self, cursor: ChangeCursor | None = None) -> None:
        cursor = cursor or self.store.change_cursor()
        for space, state in list(self._spaces.items()):
            if cursor.seq < state.seq:
                # The log went backwards: the database was restored. Everything this index
                # knows past that point may be wrong; searches wait for a correct one.
                logger.warning(
                    "index %s: database seq %d is behind the index (%d): database restored? "
                    "rebuilding",
                    space,
                    cursor.seq,
                    state.seq,
                )
                self._replace_now(space, cursor, use_snapshot=False)
                continue
            if cursor.generation(space) != state.generation:
                # `index rebuild` ran elsewhere; this index stays correct (the log goes on), a
                # job swaps in the new snapshot.
                self._ask_refresh(space, use_snapshot=True, why="generation changed")
            if cursor.seq == state.seq:
                continue
            backlog = cursor.seq - state.seq  # upper bound of this space's pending rows
            if backlog > self.rebuild_backlog:
                pending = self.store.pending_changes(space, state.seq)
                if pending > max(self.rebuild_backlog, state.index.ntotal // 2):
                    # Replaying e.g. a million bulk inserts one chunk at a time is slower than
                    # reading the profiles once.
                    logger.info("index %s: %d pending changes, rebuilding", space, pending)
                    self._replace_now(space, cursor, use_snapshot=False)
                    continue
            try:
                self._catch_up(space, state, cursor)
            except LogCompacted as error:
                logger.info("index %s: %s; reloading", space, error)
                self._replace_now(space, cursor, use_snapshot=True)
                continue
            self._sizes[space] = state.index.ntotal
            self._maybe_ask_rebuild(space, state)

    def _replace_now(self, space: str, cursor: ChangeCursor, *, use_snapshot: bool) -> None:
        """Replace a space's index while searches wait (caller holds the gallery lock): only
        for an index that cannot be caught up. No file lock (order), so no snapshot written
        here; a background snapshot follows."""
        state = None
        if use_snapshot:
            state, _ = self._try_snapshot(space, cursor)
        if state is None:
            state = self._build(space)
            state.unsaved = max(state.unsaved, self.snapshot_every)
        self._catch_up(space, state, self.store.change_cursor())
        self._spaces[space] = state
        self._sizes[space] = state.index.ntotal

    def _maybe_ask_rebuild(self, space: str, state: SpaceState) -> None:
        why = state.index.needs_rebuild
        if why is None and not self.index_spec.accepts(state.index.spec.meta(), state.index.ntotal):
            why = (
                f"{state.index.ntotal} vectors: index type {state.index.spec.kind!r} no longer fits"
            )
        if why is not None:
            self._ask_refresh(space, use_snapshot=True, why=why)

    def _ask_refresh(self, space: str, *, use_snapshot: bool, why: str) -> None:
        self.jobs.ask(
            space,
            "refresh",
            lambda: self._refresh(space, use_snapshot=use_snapshot, why=why),
        )

    def sync(self) -> None:
        """Bring every index up to date with the database: one cheap query when nothing changed,
        the changed profiles when something did."""
        self._ensure_open()
        with self._lock:
            self._sync_locked()
        self.jobs.start_due()

    def publish(self) -> None:
        """Nothing to do: every process replays the log itself before it searches."""

    # ------------------------------------------------------------------ queries
    def search(self, space: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` speakers per query row (a 1-D vector is one query), best first. The
        index is synced first, so every committed write is visible. Empty index → ``[[]...]``."""
        self._check_space(space)
        self._ensure_open()
        with self._lock:
            self._sync_locked()
            scores, ids = self._spaces[space].index.search(vectors, k, threads=self.search_threads)
        self.jobs.start_due()
        return hits_of(scores, ids)

    def search_briefs(
        self, space: str, vector: np.ndarray, k: int, describe: int
    ) -> tuple[list[Hit], dict[int, SpeakerBrief]]:
        """Top-``k`` hits of one query and the speakers of the first ``describe`` of them, with
        ONE database round trip when nothing changed: search the index as it is, then fetch
        the speakers together with the change cursor; only if the cursor shows changes the
        index had not applied, catch up, search again and fetch again."""
        self._check_space(space)
        self._ensure_open()
        with self._lock:
            state = self._spaces[space]
            seen = state.seq
            scores, ids = state.index.search(vector, k, threads=self.search_threads)
        hits = hits_of(scores, ids)[0]
        cursor, briefs = self.store.cursor_and_briefs([h.speaker_id for h in hits[:describe]])
        current = (
            cursor.seq <= seen
            and cursor.horizon(space) <= seen
            and (cursor.generation(space) == state.generation or self.jobs.busy(space))
        )
        if current:
            return hits, briefs
        with self._lock:
            self._sync_locked(cursor)
            scores, ids = self._spaces[space].index.search(vector, k, threads=self.search_threads)
        self.jobs.start_due()
        hits = hits_of(scores, ids)[0]
        _, briefs = self.store.cursor_and_briefs([h.speaker_id for h in hits[:describe]])
        return hits, briefs

    def vectors(self, space: str, ids: np.ndarray) -> np.ndarray:
        """Indexed vectors of ``ids`` (float32 (n, dim)), as of the last sync; ids no longer
        indexed give rows of NaN (read-only, for score normalisation)."""
        self._check_space(space)
        self._ensure_open()
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
        self._ensure_open()
        with self._lock:
            state = self._spaces[space]
            return state.generation, state.seq

    def index_kind(self, space: str) -> str:
        """The structure the space's index has now (``auto`` resolved: flat, fastscan, hnsw)."""
        self._check_space(space)
        self._ensure_open()
        with self._lock:
            return self._spaces[space].index.spec.kind

    def size(self, space: str) -> int:
        """Searchable vectors of ``space`` as of the last sync. Takes no lock and asks no
        database (``/health`` and every find-match answer read it)."""
        self._check_space(space)
        return self._sizes.get(space, 0)

    # ------------------------------------------------------------------ snapshots
    def snapshot_age_s(self, space: str) -> float | None:
        try:
            return max(0.0, time.time() - self.snapshot_path(space).stat().st_mtime)
        except FileNotFoundError:
            return None

    def maybe_snapshot(self) -> None:
        """Snapshot every space with at least ``snapshot_every`` unsaved changes."""
        self.sync()
        with self._lock:
            due = [s for s, st in self._spaces.items() if st.unsaved >= self.snapshot_every]
        for space in due:
            self.snapshot(space)

    def snapshot(self, space: str | None = None) -> None:
        """Write the snapshot of ``space`` (default: every space) now, unless the file on disk
        already holds this data or newer (another worker wrote it)."""
        self._ensure_open()
        spaces = [space] if space is not None else list(self.dims)
        for name in spaces:
            self._check_space(name)
            with self.files.lock(name, self.snapshot_lock_timeout_s) as locked:
                if not locked:
                    logger.info("index %s: snapshot skipped, another process holds the lock", name)
                    continue
                self.files.remove_stale_temps(name)
                on_disk = self.files.read_meta(name)
                with self._lock:
                    cursor = self.store.change_cursor()
                    self._sync_locked(cursor)
                    state = self._spaces[name]
                    if cursor.generation(name) != state.generation:
                        continue  # a rebuild happened; its snapshot is the one to keep
                    if self._covers(on_disk, state):
                        state.unsaved = 0
                        continue
                    meta, sections = self._snapshot_parts(name, state)
                    unsaved = state.unsaved
                # Rows of an index never change once written: written out without the lock.
                self.files.write(name, meta, sections)
                with self._lock:
                    if self._spaces.get(name) is state:
                        state.unsaved = max(0, state.unsaved - unsaved)
                self._compact_log(name, meta)
        self.jobs.start_due()

    def _covers(self, on_disk: dict | None, state: SpaceState) -> bool:
        """Whether the snapshot on disk already holds ``state``'s data or newer."""
        return (
            on_disk is not None
            and on_disk.get("generation") == state.generation
            and on_disk.get("database") == self._database
            and isinstance(on_disk.get("seq"), int)
            and on_disk["seq"] >= state.seq
            and on_disk.get("index_type") == state.index.spec.kind
        )

    def _snapshot_parts(self, space: str, state: SpaceState) -> tuple[dict, list]:
        meta = snapshot_meta(
            space,
            state,
            self.model_identities[space],
            database=self._database,
            log_row=self.store.log_row(space, state.seq),
        )
        return state.index.snapshot_parts(meta)

    def _write_snapshot(self, space: str, state: SpaceState) -> None:
        """Save ``state`` now (the caller holds the space's file lock)."""
        meta, sections = self._snapshot_parts(space, state)
        self.files.write(space, meta, sections)
        state.unsaved = 0
        self._compact_log(space, meta)

    def _compact_log(self, space: str, meta: dict) -> None:
        """After a snapshot: drop the space's change rows older than its fingerprint row."""
        row = meta.get("log_row")
        if row is None:
            return
        deleted = self.store.compact(space, int(row[0]), keep_s=self.log_keep_s)
        if deleted:
            logger.info(
                "index %s: compacted %d change-log rows below seq %s", space, deleted, row[0]
            )

    # ------------------------------------------------------------------ admin
    def rebuild(
        self, space: str, progress: Callable[[int, int], None] | None = None
    ) -> RebuildReport:
        """Rebuild ``space`` from the database, save the snapshot, then bump the generation so
        every running worker reloads (``gallery_admin.rebuild_space``)."""
        self._check_space(space)
        self._ensure_open()

        def install(state: SpaceState) -> None:
            self._install(space, state)

        def meta_of(state: SpaceState) -> tuple[dict, list]:
            return self._snapshot_parts(space, state)

        return rebuild_space(
            self.store,
            self.files,
            space,
            build=lambda: self._build(space, progress),
            snapshot_parts=meta_of,
            lock_timeout_s=self.file_lock_timeout_s,
            install=install,
        )

    def verify(self) -> dict[str, VerifyReport]:
        """Compare every index with the database: missing ids, extra ids, differing vectors.

        Holds the gallery lock for the scan (searches in this process wait); writes committed
        by other processes during the scan can show up as transient differences — run it again.
        """
        self._ensure_open()
        reports: dict[str, VerifyReport] = {}
        with self._lock:
            self._sync_locked()
            for space, state in self._spaces.items():
                reports[space] = verify_index(
                    self.store, space, FaissVectors(state.index), tolerance=self.verify_tolerance
                )
        return reports

    def close(self, timeout: float | None = 30.0) -> None:
        """Wait for running maintenance jobs (shutdown)."""
        self.jobs.join(timeout)
