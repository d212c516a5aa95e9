"""The vector store on Milvus: one collection per space, shared by every node, driven by the log.

The database stays the source of truth and ``index_changes`` says what changed, exactly as for
FAISS (``service.search.gallery``); what differs is that the vectors live once, in Milvus, for
all nodes. Milvus's own state row per space (``index.milvus_collections``) records the live
collection and ``seq``, the newest change-log row applied to it. The rules:

* **Replays are serialised and idempotent.** Applying the log (``_replay``) happens while
  holding the database's writers' lock (``ChangeLog.holding_write_lock``): nobody commits
  meanwhile and no two nodes replay at once, so an older profile can never be written over a
  newer one. Each change sets the speaker's *current* profile (or deletes it), and the state
  row is advanced only after the vectors are written: a crash anywhere in between leaves the
  row behind and the next replay re-applies the same changes, harmlessly.
* **The writer publishes before it answers** (``publish``, called by ``VoiceSearch`` after the
  commit): an acknowledged write is in Milvus, and Milvus reads with Strong consistency, so the
  next search on any node finds it.
* **Any node repairs a lag before trusting a search.** A search reads the change cursor with
  the hits' speakers in ONE database query, as with FAISS (``ChangeLog.cursor_and_briefs``).
  If the log moved past what this node last saw applied, it reads the state row (one Milvus
  get); if Milvus is behind the log (a writer died between its commit and its publish), it
  replays the rest and searches again.
* **Rebuilds never empty the live collection.** ``rebuild`` fills a fresh collection beside
  the live one, replays what changed meanwhile under the lock, switches the state row, drops
  the old collection and bumps the space's generation (the cursor every search reads), so
  every node re-reads the state row.

No snapshots, no per-process catch-up of vectors, no compaction: ``maybe_snapshot`` does
nothing and ``snapshot`` publishes. Metadata filters work as with FAISS (the database answers
them; ``service.search.matching``); the FAISS index kinds (``fastscan``, ``hnsw``, ``auto``)
do not apply: collections use Milvus's FLAT index on inner product.

Longer than ~400 lines on purpose: the replay, build and verify rules above are one
protocol; kept together so the crash-safety argument can be read in one file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from index.milvus_collections import MilvusCollections, MilvusError, SpaceRecord
from service.core.errors import UnknownSpace, VectorStoreUnavailable
from service.search.gallery_admin import RebuildReport, VerifyReport, verify_index
from service.search.vector_store import Hit, hits_of
from storage.change_log import ChangeLog
from storage.records import ChangeCursor, SpeakerBrief

logger = logging.getLogger(__name__)


class _NeedsBuild(Exception):
    """Milvus's copy of a space cannot be caught up from the log (the reason): build it."""


@dataclass
class _Live:
    """What this process last saw of one space in Milvus (a lower bound of the truth)."""

    collection: str
    seq: int
    generation: int  # the database's generation of the space when this was read
    size: int


@dataclass(frozen=True)
class _MilvusVectors:
    """One collection as ``verify_index`` reads it."""

    collections: MilvusCollections
    name: str

    @property
    def count(self) -> int:
        return self.collections.count(self.name)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = self.collections.get(self.name, ids)
        present = np.fromiter((int(i) in found for i in ids), dtype=bool, count=ids.size)
        rows = [found[int(i)] for i in ids[present]]
        return present, (np.stack(rows) if rows else np.empty((0, 0), dtype=np.float32))

    def all_ids(self) -> np.ndarray:
        batches = list(self.collections.iter_ids(self.name))
        return np.concatenate(batches) if batches else np.empty(0, dtype=np.int64)


class MilvusGallery:
    #: Changes replayed per ``changes_since`` round trip.
    replay_chunk = 20_000
    verify_tolerance = 1e-5

    def __init__(
        self,
        store: ChangeLog,
        collections: MilvusCollections,
        dims: Mapping[str, int],
        model_identities: Mapping[str, str],
    ) -> None:
        for space in dims:
            if store.model_identities.get(space) != model_identities.get(space):
                raise ValueError(f"store and gallery disagree on the model of space {space!r}")
        self.store = store
        self.collections = collections
        self.dims: dict[str, int] = dict(dims)
        self.model_identities: dict[str, str] = {s: model_identities[s] for s in dims}
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()  # guards _live (the Milvus calls run outside it)
        self._open_lock = threading.Lock()
        self._opened = False
        self._database: str | None = None

    # ------------------------------------------------------------------ helpers
    def _check_space(self, space: str) -> None:
        if space not in self.dims:
            raise UnknownSpace(
                f"unknown encoder space {space!r}", details={"known": sorted(self.dims)}
            )

    def _problem(self, space: str, record: SpaceRecord | None, cursor: ChangeCursor) -> str | None:
        """Why Milvus's copy of ``space`` cannot be caught up from the log, or None."""
        if record is None:
            return "no collection yet"
        if not self.collections.exists(record.collection):
            return f"collection {record.collection} is missing"
        if record.dim != self.dims[space]:
            return f"collection holds {record.dim}-d vectors, the model makes {self.dims[space]}"
        if record.model_identity != self.model_identities[space]:
            return f"collection was made by model {record.model_identity}"
        if record.database != self._database:
            return "collection belongs to another database"
        if record.seq > cursor.seq:
            return f"Milvus reflects seq {record.seq}, the database only {cursor.seq}: restored?"
        if record.seq < cursor.horizon(space):
            return f"log compacted up to {cursor.horizon(space)}, Milvus is at {record.seq}"
        return None

    def _apply(self, name: str, changes: list[tuple[int, np.ndarray | None]]) -> None:
        removed = [i for i, vector in changes if vector is None]
        kept = [(i, vector) for i, vector in changes if vector is not None]
        if removed:
            self.collections.delete(name, np.asarray(removed, dtype=np.int64))
        if kept:
            self.collections.upsert(
                name,
                np.asarray([i for i, _ in kept], dtype=np.int64),
                np.stack([v for _, v in kept]),
            )

    def _replay_into(self, space: str, name: str, seq: int) -> tuple[int, int]:
        """Apply every change after ``seq`` to collection ``name`` (caller holds the writers'
        lock); returns ``(new seq, speakers touched)``. Does not write the state row."""
        touched = 0
        while True:
            new_seq, changes = self.store.changes_since(space, seq, limit=self.replay_chunk)
            if new_seq <= seq:
                return seq, touched
            self._apply(name, changes)
            seq = new_seq
            touched += len(changes)

    def _replay(self, space: str) -> tuple[SpaceRecord, int]:
        """Bring Milvus's copy of ``space`` up to the log, under the writers' lock."""

        def work() -> tuple[SpaceRecord, int]:
            record = self.collections.read_state(space)
            problem = self._problem(space, record, self.store.change_cursor())
            if problem or record is None:
                raise _NeedsBuild(problem)
            seq, touched = self._replay_into(space, record.collection, record.seq)
            if seq != record.seq:
                record = replace(record, seq=seq)
                self.collections.write_state(record)  # after the vectors: a crash re-applies
            return record, touched

        return self.store.holding_write_lock(work)

    def _install(self, space: str, record: SpaceRecord, generation: int) -> _Live:
        # The size: the database's profile count, which the collection equals once caught up
        # (this runs right after a replay); one indexed query instead of Milvus's count(*),
        # which Milvus Lite answers slowly.
        size = self.store.profile_count(space)
        live = _Live(record.collection, record.seq, generation, size)
        with self._lock:
            self._live[space] = live
        return live

    def _milvus(self, work: Callable[[], object]) -> object:
        try:
            return work()
        except MilvusError as error:
            raise VectorStoreUnavailable(
                "the vector store (Milvus) did not answer; writes are kept in the database",
                details={"uri": self.collections.uri, "reason": str(error)[:300]},
            ) from error

    # ------------------------------------------------------------------ open / build
    def open(self) -> dict[str, str]:
        with self._open_lock:
            return self._open_locked()

    def _open_locked(self) -> dict[str, str]:
        self._database = self.store.database_identity()
        self.collections.ensure_state()
        how = {space: self._open_space(space) for space in self.dims}
        self._opened = True
        return how

    def _ensure_open(self) -> None:
        if not self._opened:
            with self._open_lock:
                if not self._opened:
                    self._milvus(self._open_locked)

    def _open_space(self, space: str) -> str:
        cursor = self.store.change_cursor()
        try:
            record, touched = self._replay(space)
        except _NeedsBuild as why:
            record, count = self._build(space, only_if_missing=True)
            self._install(space, record, cursor.generation(space))
            return f"built Milvus collection {record.collection}: {why} ({count} vectors)"
        live = self._install(space, record, cursor.generation(space))
        return (
            f"Milvus collection {record.collection} (seq {record.seq}), replayed {touched} "
            f"changes → {live.size} vectors"
        )

    def _build(
        self,
        space: str,
        *,
        only_if_missing: bool,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[SpaceRecord, int]:
        """Fill a fresh collection from the profiles (no lock: writers go on), then under the
        lock replay what changed since the scan began and make it the live one. With
        ``only_if_missing`` a usable collection another node installed meanwhile wins."""
        start = self.store.change_cursor()
        name = self.collections.new_collection(space, self.dims[space])
        try:
            total = self.store.profile_count(space)
            done = 0
            if progress:
                progress(0, total)
            for ids, vectors in self.store.iter_profiles(space):
                self.collections.upsert(name, ids, vectors)
                done += ids.size
                if progress:
                    progress(done, max(done, total))
            self.collections.flush(name)

            def switch() -> tuple[SpaceRecord, SpaceRecord | None]:
                cursor = self.store.change_cursor()
                old = self.collections.read_state(space)
                if only_if_missing and self._problem(space, old, cursor) is None and old:
                    return old, None
                if start.seq < cursor.horizon(space):
                    raise _NeedsBuild("the log was compacted during the build")
                seq, _ = self._replay_into(space, name, start.seq)
                record = SpaceRecord(
                    space=space,
                    collection=name,
                    seq=seq,
                    dim=self.dims[space],
                    model_identity=self.model_identities[space],
                    database=self._database,
                )
                self.collections.write_state(record)
                return record, old

            record, old = self.store.holding_write_lock(switch)
        except BaseException:
            self.collections.drop(name)
            raise
        if record.collection != name:
            self.collections.drop(name)  # another node's build won
        elif old is not None and old.collection != name:
            self.collections.drop(old.collection)  # searches on it retry on the new one
        return record, self.collections.count(record.collection)

    # ------------------------------------------------------------------ keeping up
    def _live_of(self, space: str) -> _Live:
        self._check_space(space)
        self._ensure_open()
        with self._lock:
            return self._live[space]

    def _catch_up(self, space: str, cursor: ChangeCursor) -> tuple[_Live, bool]:
        """Make sure Milvus reflects at least ``cursor``; returns this process's new view and
        whether a search made before this call may have missed something (search again)."""
        live = self._live_of(space)
        record = self.collections.read_state(space)
        generation = cursor.generation(space)
        if (
            record is not None
            and record.collection == live.collection
            and record.seq >= cursor.seq
            and generation == live.generation
        ):
            # Everything acknowledged before the search was published before its answer.
            if record.seq != live.seq:
                live = self._install(space, record, generation)
            return live, False
        try:
            record, _ = self._replay(space)
        except _NeedsBuild as why:
            logger.warning("milvus %s: %s; building a fresh collection", space, why)
            record, _ = self._build(space, only_if_missing=True)
        return self._install(space, record, generation), True

    def _current(self, live: _Live, cursor: ChangeCursor, space: str) -> bool:
        return cursor.seq <= live.seq and cursor.generation(space) == live.generation

    def sync(self) -> None:
        self._ensure_open()
        cursor = self.store.change_cursor()
        for space in self.dims:
            if not self._current(self._live_of(space), cursor, space):
                self._milvus(lambda space=space: self._catch_up(space, cursor))

    def publish(self) -> None:
        """After a commit, before the answer: apply it (and anything else pending) to Milvus."""
        self.sync()

    # ------------------------------------------------------------------ queries
    def _search_once(
        self, space: str, vectors: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        live = self._live_of(space)
        try:
            return self.collections.search(live.collection, vectors, k)
        except MilvusError:
            # The collection may have been replaced by a rebuild elsewhere: look once more.
            self._catch_up(space, self.store.change_cursor())
            return self.collections.search(self._live_of(space).collection, vectors, k)

    def search(self, space: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        self._check_space(space)
        self.sync()
        scores, ids = self._milvus(lambda: self._search_once(space, vectors, k))
        return hits_of(scores, ids)

    def search_briefs(
        self, space: str, vector: np.ndarray, k: int, describe: int
    ) -> tuple[list[Hit], dict[int, SpeakerBrief]]:
        live = self._live_of(space)
        scores, ids = self._milvus(lambda: self._search_once(space, vector, k))
        hits = hits_of(scores, ids)[0]
        cursor, briefs = self.store.cursor_and_briefs([h.speaker_id for h in hits[:describe]])
        if self._current(live, cursor, space):
            return hits, briefs
        _, again = self._milvus(lambda: self._catch_up(space, cursor))
        if not again:
            return hits, briefs
        scores, ids = self._milvus(lambda: self._search_once(space, vector, k))
        hits = hits_of(scores, ids)[0]
        _, briefs = self.store.cursor_and_briefs([h.speaker_id for h in hits[:describe]])
        return hits, briefs

    def vectors(self, space: str, ids: np.ndarray) -> np.ndarray:
        live = self._live_of(space)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.full((ids.size, self.dims[space]), np.nan, dtype=np.float32)
        if ids.size:
            found = self._milvus(lambda: self.collections.get(live.collection, ids))
            for row, speaker_id in enumerate(ids.tolist()):
                if speaker_id in found:
                    out[row] = found[speaker_id]
        return out

    def version(self, space: str) -> tuple[int, int]:
        live = self._live_of(space)
        return live.generation, live.seq

    def size(self, space: str) -> int:
        self._check_space(space)
        with self._lock:
            live = self._live.get(space)
        return live.size if live else 0

    def index_kind(self, space: str) -> str:
        self._check_space(space)
        return "milvus"

    def snapshot_age_s(self, space: str) -> float | None:
        return None

    def maybe_snapshot(self) -> None:
        """Nothing: Milvus keeps the vectors durable itself."""

    def snapshot(self, space: str | None = None) -> None:
        """No snapshot files: make sure every committed change is in Milvus."""
        self.sync()

    # ------------------------------------------------------------------ admin
    def rebuild(
        self, space: str, progress: Callable[[int, int], None] | None = None
    ) -> RebuildReport:
        """A fresh collection from the database beside the live one, switched in; every node
        re-reads the state row when it sees the bumped generation."""
        self._check_space(space)
        self._ensure_open()
        started = time.perf_counter()
        record, count = self._milvus(
            lambda: self._build(space, only_if_missing=False, progress=progress)
        )
        generation = self.store.bump_generation(space)
        self._install(space, record, generation)
        logger.info("milvus %s: rebuilt %d vectors into %s", space, count, record.collection)
        return RebuildReport(
            space=space,
            count=count,
            generation=generation,
            seq=record.seq,
            seconds=time.perf_counter() - started,
            snapshot=None,
        )

    def verify(self) -> dict[str, VerifyReport]:
        """Compare every collection with the database (writes committed meanwhile by other
        nodes can show up as transient differences: run it again)."""
        self.sync()
        reports: dict[str, VerifyReport] = {}
        for space in self.dims:
            view = _MilvusVectors(self.collections, self._live_of(space).collection)
            reports[space] = self._milvus(
                lambda space=space, view=view: verify_index(
                    self.store, space, view, tolerance=self.verify_tolerance
                )
            )
        return reports

    def close(self, timeout: float | None = 30.0) -> None:
        self.collections.close()
