# ruff: noqa: F811  (the gallery fixtures are imported from test_gallery and used by name)
"""Issue 10's index-integrity items, one regression test each:

* item 10: a snapshot is tied to its database — a snapshot of another database, or of this one
  before it was restored from an older backup and written again, is never served;
* item 13: temp snapshot files of dead writers are removed, and the change log is compacted
  below the snapshot (a worker that lagged behind reloads instead of missing changes);
* item 8 (gallery part): searches go on, and see new writes, while a rebuild runs.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.synthetic import bulk_insert_synthetic
from index.spec import IndexSpec
from service.search.gallery import Gallery
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.speakers import SpeakerStore
from tests.test_gallery import (  # noqa: F401  (fixtures used by name)
    DIMS,
    IDENTITIES,
    VOX,
    Worker,
    db_url,
    enroll,
    make_worker,
    rng,
    snapshot_dir,
    top,
)

WorkerFactory = Callable[..., Worker]


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite file (the backup API, as `sqlite3 .backup` does)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def _restore(backup: Path, live: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{live}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, live)


def test_snapshot_of_a_database_restored_from_an_older_backup_is_refused(
    make_worker: WorkerFactory, tmp_path: Path, rng: np.random.Generator
) -> None:
    live = tmp_path / "vs.db"
    store, gallery = make_worker()
    enroll(store, rng, "alice")
    _copy_database(live, tmp_path / "backup.db")
    # After the backup: bob and carol, then a snapshot at a seq the backup never reached.
    bob_id, bob_voice = enroll(store, rng, "bob")
    enroll(store, rng, "carol")
    gallery.snapshot()
    store.session_factory.kw["bind"].dispose()

    _restore(tmp_path / "backup.db", live)
    # Written again past the snapshot's seq: the same ids now belong to other people.
    store2, _ = make_worker(open_=False)
    dave_id, dave_voice = enroll(store2, rng, "dave", n=2)
    enroll(store2, rng, "erin", n=2)
    assert dave_id == bob_id

    _, reopened = make_worker(open_=False)
    how = reopened.open()
    assert "restored from an older copy" in how[VOX], how[VOX]
    hits = reopened.search(VOX, bob_voice[None, :], 3)[0]
    # Bob's voice must not come back as id 2 with his own score: id 2 is dave now.
    assert not any(h.speaker_id == bob_id and h.score > 0.99 for h in hits)
    assert top(reopened, dave_voice, 1) == [dave_id]
    assert reopened.verify()[VOX].ok


def test_snapshot_of_another_database_is_refused(
    make_worker: WorkerFactory, tmp_path: Path, snapshot_dir: Path, rng: np.random.Generator
) -> None:
    store, gallery = make_worker()
    enroll(store, rng, "alice")
    gallery.snapshot()
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade_to_head(other_url)
    engine = make_engine(other_url)
    try:
        other_store = SpeakerStore(make_session_factory(engine), IDENTITIES)
        other = Gallery(other_store, snapshot_dir, DIMS, IDENTITIES)
        how = other.open()
        assert "another database" in how[VOX], how[VOX]
        assert other.size(VOX) == 0
    finally:
        engine.dispose()


def test_stale_temp_snapshot_files_are_removed(
    make_worker: WorkerFactory, snapshot_dir: Path, rng: np.random.Generator
) -> None:
    store, gallery = make_worker()
    enroll(store, rng, "alice")
    gallery.snapshot()
    dead = snapshot_dir / f".{VOX}.faiss.999999999.deadbeef.tmp"  # a pid that does not run
    alive = snapshot_dir / f".{VOX}.faiss.{os.getpid()}.cafe.tmp"  # a writer still at work
    for path in (dead, alive):
        path.write_bytes(b"half a snapshot")
    old = time.time() - 120
    os.utime(dead, (old, old))
    os.utime(alive, (old, old))
    make_worker(open_=False)[1].open()
    assert not dead.exists()
    assert alive.exists()


def test_change_log_is_compacted_and_a_lagging_worker_reloads(
    make_worker: WorkerFactory, rng: np.random.Generator
) -> None:
    store, writer = make_worker()
    writer.log_keep_s = 0.0
    _, lagging = make_worker()  # opened now, then idle while the log moves on
    people = [enroll(store, rng, f"p{i}") for i in range(12)]
    assert store.pending_changes(VOX, 0) == 12
    writer.snapshot(VOX)
    # Everything below the snapshot's fingerprint row is gone; the horizon says how far.
    assert store.pending_changes(VOX, 0) <= 1
    assert store.change_cursor().horizon(VOX) >= 11
    # The lagging worker cannot replay deleted rows: it reloads from the snapshot.
    for speaker_id, profile in people:
        assert top(lagging, profile, 1) == [speaker_id]
    assert lagging.verify()[VOX].ok


def test_searches_go_on_and_see_writes_while_a_rebuild_runs(
    make_worker: WorkerFactory, rng: np.random.Generator
) -> None:
    store, gallery = make_worker()
    people = [enroll(store, rng, f"r{i}") for i in range(20)]
    inside, release = threading.Event(), threading.Event()

    def progress(done: int, total: int) -> None:
        # The rebuild stops here, mid-scan, until the test has searched.
        inside.set()
        assert release.wait(30)

    rebuild = threading.Thread(target=gallery.rebuild, args=(VOX, progress))
    rebuild.start()
    try:
        assert inside.wait(30)
        new_id, new_voice = enroll(store, rng, "during")
        for speaker_id, profile in [*people[:5], (new_id, new_voice)]:
            started = time.perf_counter()
            assert top(gallery, profile, 1) == [speaker_id]
            assert time.perf_counter() - started < 1.0
        started = time.perf_counter()
        assert gallery.size(VOX) == 21
        assert time.perf_counter() - started < 1.0
    finally:
        release.set()
        rebuild.join(60)
    assert not rebuild.is_alive()
    assert gallery._spaces[VOX].generation == 1
    assert top(gallery, new_voice, 1) == [new_id]
    assert gallery.verify()[VOX].ok


def test_auto_switches_kind_beside_the_live_index(
    make_worker: WorkerFactory, rng: np.random.Generator
) -> None:
    store, gallery = make_worker(index_spec=IndexSpec(kind="auto", auto_threshold=1000))
    assert gallery._spaces[VOX].index.spec.kind == "flat"
    vectors = rng.standard_normal((2100, DIMS[VOX])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    bulk_insert_synthetic(store, VOX, vectors)
    gallery.sync()  # beyond 2x the threshold flat no longer fits: a job swaps in fastscan
    gallery.jobs.join()
    assert gallery._spaces[VOX].index.spec.kind == "fastscan"
    assert gallery.verify()[VOX].ok
