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
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from index.errors import IndexCorruptError
from index.vector_index import IndexSpec, VectorIndex, write_snapshot
from service.core.errors import UnknownSpace
from storage.change_log import ChangeLog
from storage.records import ChangeCursor

logger = logging.getLogger(__name__)

_SAMPLE = 100  # ids listed per category in a VerifyReport


@dataclass(frozen=True)
class Hit:
    speaker_id: int
    score: float


@dataclass(frozen=True)
class RebuildReport:
    space: str
    count: int
    generation: int
    seq: int
    seconds: float
    snapshot: Path


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


@dataclass
class _SpaceState:
    index: VectorIndex
    seq: int  # last change-log seq reflected in ``index``
    generation: int  # rebuild generation the index was built/loaded for
    unsaved: int = 0  # changes applied since the last snapshot


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
        self.snapshot_dir = Path(snapshot_dir)
        self.dims: dict[str, int] = dict(dims)
        self.model_identities: dict[str, str] = {s: model_identities[s] for s in dims}
        self.snapshot_every = int(snapshot_every)
        #: Which FAISS index every space uses (flat = exact, hnsw = approximate).
        self.index_spec = index_spec or IndexSpec()
        self._lock = threading.RLock()
        self._spaces: dict[str, _SpaceState] = {}
        self._opened = False

    # ------------------------------------------------------------------ paths and locks
    def snapshot_path(self, space: str) -> Path:
        return self.snapshot_dir / f"{space}.faiss"

    @contextlib.contextmanager
    def _file_lock(self, space: str, timeout: float) -> Iterator[bool]:
        """Cross-process (and cross-thread: one fresh lock object per use) lock of one space.
        Yields False when it could not be had in time; callers decide whether to go on."""
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.snapshot_dir / f".{space}.lock"), thread_local=False)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

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
        with self._file_lock(space, self.file_lock_timeout_s) as locked:
            if not locked:
                logger.warning("index %s: file lock busy, opening without it", space)
            cursor = self.store.change_cursor()
            path = self.snapshot_path(space)
            try:
                index, meta = VectorIndex.load(path)
            except FileNotFoundError:
                return self._rebuild_and_install(space, "rebuilt from database: no snapshot")
            except (IndexCorruptError, OSError) as error:
                logger.warning("index %s: snapshot unusable: %s", space, error)
                return self._rebuild_and_install(
                    space, f"rebuilt from database: corrupt snapshot ({error})"
                )
            problem = self._meta_problem(space, meta, cursor)
            if problem:
                logger.warning("index %s: snapshot not used: %s", space, problem)
                return self._rebuild_and_install(space, f"rebuilt from database: {problem}")

            index.set_runtime_options(self.index_spec)
            state = _SpaceState(index=index, seq=int(meta["seq"]), generation=meta["generation"])
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

    def _meta_problem(self, space: str, meta: dict, cursor: ChangeCursor) -> str | None:
        identity = self.model_identities[space]
        if meta.get("space") != space:
            return f"snapshot is for space {meta.get('space')!r}"
        if meta.get("dim") != self.dims[space]:
            return f"snapshot dimension {meta.get('dim')} != model dimension {self.dims[space]}"
        wanted = self.index_spec.meta()
        stored = {key: meta.get(key, "flat" if key == "index_type" else None) for key in wanted}
        if stored != wanted:
            return f"index type changed (snapshot {stored}, configured {wanted})"
        if meta.get("model_identity") != identity:
            return f"model changed (snapshot {meta.get('model_identity')!r}, loaded {identity!r})"
        if meta.get("generation") != cursor.generation(space):
            return (
                f"index generation {meta.get('generation')} != database generation "
                f"{cursor.generation(space)} (an index rebuild happened)"
            )
        seq = meta.get("seq")
        if not isinstance(seq, int) or seq < 0:
            return "snapshot has no valid seq"
        if seq > cursor.seq:
            return f"snapshot seq {seq} is ahead of the database ({cursor.seq}): database restored?"
        return None

    def _rebuild_and_install(self, space: str, reason: str) -> str:
        """Build from the database, install, and save a snapshot (caller holds both locks)."""
        state = self._build_from_db(space)
        self._spaces[space] = state
        self._write_state(space, state)
        return f"{reason} ({state.index.ntotal} vectors)"

    def _build_from_db(
        self, space: str, progress: Callable[[int, int], None] | None = None
    ) -> _SpaceState:
        """A fresh index of every current-model profile, caught up with the log.

        The cursor is read *before* the scan: the scan reflects at least that state, and
        replaying every change after it (idempotent: each replay sets the speaker's current
        profile) covers whatever the scan missed or saw half of.
        """
        cursor = self.store.change_cursor()
        total = self.store.profile_count(space)
        index = VectorIndex(self.dims[space], spec=self.index_spec)
        done = 0
        if progress:
            progress(0, total)
        for ids, vectors in self.store.iter_profiles(space):
            # Keyset order: strictly increasing, unique ids into an empty index.
            index.add(ids, vectors, assume_new=True)
            done += ids.size
            if progress:
                progress(done, max(total, done))
        state = _SpaceState(index=index, seq=cursor.seq, generation=cursor.generation(space))
        self._catch_up(space, state, self.store.change_cursor().seq)
        return state

    # ------------------------------------------------------------------ change replay
    def _catch_up(self, space: str, state: _SpaceState, target_seq: int) -> int:
        """Replay the log into ``state`` until its seq reaches ``target_seq``; returns how many
        speakers were touched."""
        touched = 0
        while state.seq < target_seq:
            new_seq, changes = self.store.changes_since(space, state.seq, limit=self.replay_chunk)
            if new_seq <= state.seq:
                break  # nothing newer is visible (cannot happen with a single writer)
            self._apply(state.index, changes)
            state.seq = new_seq
            touched += len(changes)
        state.unsaved += touched
        return touched

    @staticmethod
    def _apply(index: VectorIndex, changes: list[tuple[int, np.ndarray | None]]) -> None:
        removed = [speaker_id for speaker_id, vector in changes if vector is None]
        upserts = [(speaker_id, vector) for speaker_id, vector in changes if vector is not None]
        if removed:
            index.remove(np.asarray(removed, dtype=np.int64))
        if upserts:
            index.upsert(
                np.asarray([i for i, _ in upserts], dtype=np.int64),
                np.stack([v for _, v in upserts]),
            )

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
                    fresh = self._build_from_db(space)
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
                meta = self._meta(name, state)
                count, unsaved = state.index.ntotal, state.unsaved
            with self._file_lock(name, self.snapshot_lock_timeout_s) as locked:
                if not locked:
                    logger.info("index %s: snapshot skipped, another process holds the lock", name)
                    continue
                if self.store.change_cursor().generation(name) != state.generation:
                    continue  # a rebuild happened meanwhile; its snapshot is the one to keep
                write_snapshot(
                    self.snapshot_path(name), meta, blob, dim=state.index.dim, count=count
                )
            with self._lock:
                if self._spaces.get(name) is state:
                    state.unsaved = max(0, state.unsaved - unsaved)

    def _meta(self, space: str, state: _SpaceState) -> dict:
        return {
            **state.index.spec.meta(),
            "space": space,
            "seq": state.seq,
            "generation": state.generation,
            "model_identity": self.model_identities[space],
        }

    def _write_state(self, space: str, state: _SpaceState) -> None:
        state.index.save(self.snapshot_path(space), self._meta(space, state))
        state.unsaved = 0

    # ------------------------------------------------------------------ admin
    def rebuild(
        self, space: str, progress: Callable[[int, int], None] | None = None
    ) -> RebuildReport:
        """Rebuild ``space`` from the database, save the snapshot, then bump the generation so
        every running worker reloads (from this snapshot: it already carries the new number)."""
        self._check_space(space)
        started = time.perf_counter()
        with self._file_lock(space, self.file_lock_timeout_s) as locked:
            if not locked:
                logger.warning("index %s: file lock busy, rebuilding without it", space)
            state = self._build_from_db(space, progress)
            state.generation += 1  # the value bump_generation will return, barring a race
            self._write_state(space, state)
            generation = self.store.bump_generation(space)
            if generation != state.generation:
                # Someone else bumped at the same moment: re-label so workers can load it.
                state.generation = generation
                self._write_state(space, state)
        with self._lock:
            current = self._spaces.get(space)
            if current is None or current.generation <= state.generation:
                self._spaces[space] = state
        report = RebuildReport(
            space=space,
            count=state.index.ntotal,
            generation=state.generation,
            seq=state.seq,
            seconds=time.perf_counter() - started,
            snapshot=self.snapshot_path(space),
        )
        logger.info(
            "index %s: rebuilt %d vectors in %.2fs (generation %d)",
            space,
            report.count,
            report.seconds,
            report.generation,
        )
        return report

    def verify(self) -> dict[str, VerifyReport]:
        """Compare every index with the database: missing ids, extra ids, differing vectors.

        Holds the gallery lock for the scan (searches in this process wait); writes committed
        by other processes during the scan can show up as transient differences — run it again.
        """
        reports: dict[str, VerifyReport] = {}
        with self._lock:
            self._sync_locked()
            for space, state in self._spaces.items():
                reports[space] = self._verify_space(space, state.index)
        return reports

    def _verify_space(self, space: str, index: VectorIndex) -> VerifyReport:
        db_ids: list[np.ndarray] = []
        missing: list[np.ndarray] = []
        mismatched: list[np.ndarray] = []
        for ids, vectors in self.store.iter_profiles(space):
            db_ids.append(ids)
            present = index.contains(ids)
            missing.append(ids[~present])
            if present.any():
                stored = index.reconstruct(ids[present])
                if stored.shape[1] != vectors.shape[1]:
                    mismatched.append(ids[present])
                    continue
                diff = np.abs(stored - vectors[present]).max(axis=1)
                mismatched.append(ids[present][diff > self.verify_tolerance])
        all_db = np.concatenate(db_ids) if db_ids else np.empty(0, dtype=np.int64)
        extra = np.setdiff1d(index.ids(), all_db)
        miss = np.concatenate(missing) if missing else np.empty(0, dtype=np.int64)
        bad = np.concatenate(mismatched) if mismatched else np.empty(0, dtype=np.int64)
        return VerifyReport(
            space=space,
            db_count=int(all_db.size),
            index_count=index.ntotal,
            missing=int(miss.size),
            extra=int(extra.size),
            mismatched=int(bad.size),
            missing_ids=miss[:_SAMPLE].tolist(),
            extra_ids=extra[:_SAMPLE].tolist(),
            mismatched_ids=bad[:_SAMPLE].tolist(),
        )
