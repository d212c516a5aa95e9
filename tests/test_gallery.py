"""Gallery: per-space FAISS indexes kept in step with SQLite across "workers".

Each worker is simulated by its own engine + SpeakerStore + Gallery on the same database file
and snapshot directory, which is what separate uvicorn worker processes share.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event

from bench.synthetic import bulk_insert_synthetic
from index.spec import IndexSpec
from index.vector_index import VectorIndex
from service.core.errors import UnknownSpace
from service.search.gallery import Gallery
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.records import UtteranceInput
from storage.speakers import SpeakerStore

VOX, CN = "voxceleb", "cnceleb"
DIM = 8
DIMS = {VOX: DIM, CN: DIM}
IDENTITIES = {VOX: "vox@1", CN: "cn@1"}

Worker = tuple[SpeakerStore, Gallery]


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(99)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'vs.db'}"
    upgrade_to_head(url)
    return url


@pytest.fixture
def snapshot_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def make_worker(db_url: str, snapshot_dir: Path) -> Iterator[Callable[..., Worker]]:
    engines = []

    def factory(
        identities: dict[str, str] | None = None, *, open_: bool = True, **kwargs: Any
    ) -> Worker:
        engine = make_engine(db_url)
        engines.append(engine)
        ids = identities or IDENTITIES
        store = SpeakerStore(make_session_factory(engine), ids)
        gallery = Gallery(store, snapshot_dir, DIMS, ids, **kwargs)
        if open_:
            gallery.open()
        return store, gallery

    yield factory
    for engine in engines:
        engine.dispose()


def enroll(
    store: SpeakerStore, rng: np.random.Generator, external_id: str, n: int = 1
) -> tuple[int, np.ndarray]:
    """Create a speaker; returns (id, voxceleb profile)."""
    inputs = [
        UtteranceInput(f"{external_id}-{i}", "en", 0.9, 2.0, {VOX: unit(rng), CN: unit(rng)})
        for i in range(n)
    ]
    record, _ = store.create_speaker(
        external_id=external_id, name=None, metadata=None, utterances=inputs
    )
    mean = np.mean([u.embeddings[VOX] for u in inputs], axis=0)
    return record.id, (mean / np.linalg.norm(mean)).astype(np.float32)


def top(gallery: Gallery, vector: np.ndarray, k: int = 5, space: str = VOX) -> list[int]:
    return [hit.speaker_id for hit in gallery.search(space, vector[None, :], k)[0]]


# ------------------------------------------------------------------------------ coherence
def test_write_in_one_worker_is_seen_by_the_next_search_in_another(
    make_worker: Callable[..., Worker], rng: np.random.Generator
) -> None:
    store1, gallery1 = make_worker()
    store2, gallery2 = make_worker()
    assert gallery2.search(VOX, unit(rng)[None, :], 3) == [[]]  # empty index: no error

    speaker_id, profile = enroll(store1, rng, "alice")
    hits = gallery2.search(VOX, profile[None, :], 3)[0]
    assert hits[0].speaker_id == speaker_id
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert gallery2.size(VOX) == gallery2.size(CN) == 1

    # A profile change (more utterances) is visible too.
    fresh = UtteranceInput("alice-new", "en", 0.9, 2.0, {VOX: unit(rng)})
    store1.add_utterances("alice", [fresh])
    new_profile = next(store1.iter_profiles(VOX))[1][0]
    assert gallery2.search(VOX, new_profile[None, :], 1)[0][0].score == pytest.approx(1, abs=1e-5)

    # Deleted through worker 2: never returned again by worker 1, in any space.
    other_id, _ = enroll(store1, rng, "bob")
    store2.delete("alice")
    for space in (VOX, CN):
        for _ in range(3):
            found = [h.speaker_id for h in gallery1.search(space, unit(rng)[None, :], 10)[0]]
            assert speaker_id not in found and other_id in found
    assert gallery1.size(VOX) == 1


def test_search_shapes_and_unknown_space(
    make_worker: Callable[..., Worker], rng: np.random.Generator
) -> None:
    store, gallery = make_worker()
    ids = [enroll(store, rng, f"s{i}")[0] for i in range(4)]
    result = gallery.search(VOX, np.stack([unit(rng) for _ in range(3)]), 10)
    assert len(result) == 3 and all(len(row) == 4 for row in result)
    assert all(sorted(h.speaker_id for h in row) == ids for row in result)
    assert all(row[0].score >= row[-1].score for row in result)
    assert len(gallery.search(VOX, unit(rng), 2)) == 1  # 1-D vector = one query
    with pytest.raises(UnknownSpace):
        gallery.search("klingon", unit(rng)[None, :], 1)


def test_sync_is_one_query_when_nothing_changed(
    make_worker: Callable[..., Worker], rng: np.random.Generator
) -> None:
    store, gallery = make_worker()
    enroll(store, rng, "a")
    gallery.sync()
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.startswith("BEGIN"):
            statements.append(statement)

    engine = store._engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        gallery.sync()
        gallery.search(VOX, unit(rng)[None, :], 3)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 2  # one change_cursor per sync


# ------------------------------------------------------------------------------ snapshots
def test_snapshot_then_reopen_catches_up_from_the_log(
    make_worker: Callable[..., Worker], rng: np.random.Generator, snapshot_dir: Path
) -> None:
    store, gallery = make_worker()
    kept = [enroll(store, rng, f"k{i}") for i in range(5)]
    gallery.snapshot()
    assert (snapshot_dir / f"{VOX}.faiss").is_file() and (snapshot_dir / f"{CN}.faiss").is_file()

    later = [enroll(store, rng, f"l{i}") for i in range(3)]
    store.delete("k0")

    _, reopened = make_worker(open_=False)
    how = reopened.open()
    assert how[VOX].startswith("loaded snapshot") and "replayed 4 changes" in how[VOX]
    assert reopened.size(VOX) == 7
    for speaker_id, profile in kept[1:] + later:
        assert top(reopened, profile, 1) == [speaker_id]
    assert kept[0][0] not in top(reopened, kept[0][1], 10)
    assert all(report.ok for report in reopened.verify().values())


def test_maybe_snapshot_waits_for_enough_changes(
    make_worker: Callable[..., Worker], rng: np.random.Generator, snapshot_dir: Path
) -> None:
    store, gallery = make_worker(snapshot_every=3)
    path = snapshot_dir / f"{VOX}.faiss"
    first_seq = VectorIndex.load(path)[1]["seq"]  # open() saved the initial (empty) index
    enroll(store, rng, "a")
    enroll(store, rng, "b")
    gallery.maybe_snapshot()
    assert VectorIndex.load(path)[1]["seq"] == first_seq
    enroll(store, rng, "c")
    gallery.maybe_snapshot()
    _, meta = VectorIndex.load(path)
    assert meta["count"] == 3 and meta["seq"] == store.change_cursor().seq


def test_corrupt_snapshot_is_rebuilt_with_a_logged_reason(
    make_worker: Callable[..., Worker],
    rng: np.random.Generator,
    snapshot_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, gallery = make_worker()
    people = [enroll(store, rng, f"p{i}") for i in range(4)]
    gallery.snapshot()
    path = snapshot_dir / f"{VOX}.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    caplog.set_level(logging.INFO, logger="service.search.gallery")
    _, reopened = make_worker(open_=False)
    how = reopened.open()
    assert "corrupt snapshot" in how[VOX]
    assert how[CN].startswith("loaded snapshot")
    assert "checksum mismatch" in caplog.text
    for speaker_id, profile in people:
        assert top(reopened, profile, 1) == [speaker_id]
    # The rebuilt index was saved: the next start loads it.
    assert make_worker(open_=False)[1].open()[VOX].startswith("loaded snapshot")


def test_inconsistent_snapshots_are_rebuilt(
    make_worker: Callable[..., Worker], rng: np.random.Generator, snapshot_dir: Path
) -> None:
    store, gallery = make_worker()
    enroll(store, rng, "a")
    gallery.snapshot()

    # Another model for the voxceleb space: the snapshot's vectors are from the old one.
    how = make_worker({VOX: "vox@2", CN: "cn@1"}, open_=False)[1].open()
    assert "model changed" in how[VOX] and how[CN].startswith("loaded snapshot")

    # Snapshot claims vectors the database does not have (count check).
    _, tampered = make_worker()
    tampered._spaces[CN].index.upsert(np.array([4242]), unit(rng)[None, :])
    (snapshot_dir / f"{CN}.faiss").unlink()  # else the file on disk already covers its seq
    tampered.snapshot(CN)
    how = make_worker(open_=False)[1].open()
    assert "database has 1 profiles" in how[CN]

    # Missing file.
    (snapshot_dir / f"{CN}.faiss").unlink()
    assert "no snapshot" in make_worker(open_=False)[1].open()[CN]


def test_rebuild_bumps_generation_and_other_workers_reload(
    make_worker: Callable[..., Worker],
    rng: np.random.Generator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store1, gallery1 = make_worker()
    _, gallery2 = make_worker()
    people = [enroll(store1, rng, f"p{i}") for i in range(6)]
    gallery2.sync()
    # Worker 2's index drifted (a bug, a bad disk...): an admin rebuild must fix it.
    gallery2._spaces[VOX].index.remove(np.array([people[0][0]]))

    progress: list[tuple[int, int]] = []
    report = gallery1.rebuild(VOX, progress=lambda done, total: progress.append((done, total)))
    assert report.count == 6 and report.generation == 1
    assert progress[0] == (0, 6) and progress[-1] == (6, 6)
    assert store1.change_cursor().generation(VOX) == 1

    caplog.set_level(logging.INFO, logger="service.search.gallery")
    # Its next search sees the new generation and reloads beside the live index.
    gallery2.sync()
    gallery2.jobs.join()
    assert top(gallery2, people[0][1], 1) == [people[0][0]]
    assert "generation changed" in caplog.text and "loaded snapshot" in caplog.text
    assert gallery2._spaces[VOX].generation == 1
    assert gallery2.verify()[VOX].ok

    # A worker starting after the rebuild loads the new-generation snapshot directly.
    assert make_worker(open_=False)[1].open()[VOX].startswith("loaded snapshot")


def test_large_backlog_is_rebuilt_instead_of_replayed(
    make_worker: Callable[..., Worker], rng: np.random.Generator
) -> None:
    store, gallery = make_worker()
    gallery.rebuild_backlog = 10
    gallery.replay_chunk = 7
    vectors = np.stack([unit(rng) for _ in range(40)])
    bulk_insert_synthetic(store, VOX, vectors)
    gallery.sync()
    assert gallery.size(VOX) == 40
    hits = gallery.search(VOX, vectors[5:6], 1)[0]
    assert hits[0].score == pytest.approx(1, abs=1e-5)
    # And a small backlog replayed in several chunks.
    gallery.rebuild_backlog = 10_000
    bulk_insert_synthetic(store, VOX, vectors[:20])
    gallery.sync()
    assert gallery.size(VOX) == 60
    assert gallery.verify()[VOX].ok


def test_verify_detects_a_tampered_index(
    make_worker: Callable[..., Worker], rng: np.random.Generator
) -> None:
    store, gallery = make_worker()
    people = [enroll(store, rng, f"p{i}") for i in range(5)]
    reports = gallery.verify()
    assert all(r.ok for r in reports.values())
    assert reports[VOX].db_count == reports[VOX].index_count == 5

    index = gallery._spaces[VOX].index
    index.remove(np.array([people[0][0]]))  # missing
    index.upsert(np.array([people[1][0]]), unit(rng)[None, :])  # mismatched vector
    index.upsert(np.array([777]), unit(rng)[None, :])  # extra
    report = gallery.verify()[VOX]
    assert not report.ok
    assert (report.missing, report.extra, report.mismatched) == (1, 1, 1)
    assert report.missing_ids == [people[0][0]]
    assert report.extra_ids == [777]
    assert report.mismatched_ids == [people[1][0]]
    assert "MISMATCH" in str(report)
    assert gallery.verify()[CN].ok


def test_concurrent_snapshots_from_several_workers(
    make_worker: Callable[..., Worker], rng: np.random.Generator, snapshot_dir: Path
) -> None:
    store, _ = make_worker()
    for i in range(20):
        enroll(store, rng, f"s{i}")
    galleries = [make_worker()[1] for _ in range(3)]
    errors: list[BaseException] = []

    def work(gallery: Gallery) -> None:
        try:
            for _ in range(5):
                gallery.snapshot()
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(g,)) for g in galleries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.name for p in snapshot_dir.iterdir() if not p.name.startswith(".")) == [
        f"{CN}.faiss",
        f"{VOX}.faiss",
    ]
    assert VectorIndex.load(snapshot_dir / f"{VOX}.faiss")[1]["count"] == 20


def test_store_and_gallery_must_agree_on_models(db_url: str, snapshot_dir: Path) -> None:
    engine = make_engine(db_url)
    try:
        store = SpeakerStore(make_session_factory(engine), IDENTITIES)
        with pytest.raises(ValueError, match="disagree"):
            Gallery(store, snapshot_dir, DIMS, {VOX: "other", CN: "cn@1"})
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ HNSW index
HNSW = IndexSpec(kind="hnsw", hnsw_m=8, ef_construction=32, ef_search=32)


def test_hnsw_gallery_agrees_with_flat_and_never_returns_deleted(
    make_worker: Callable[..., Worker], rng: np.random.Generator
) -> None:
    store, flat = make_worker()
    _, approx = make_worker(index_spec=HNSW)
    people = [enroll(store, rng, f"h{i}") for i in range(60)]
    for speaker_id, profile in people[:20]:
        assert top(approx, profile, 1) == [speaker_id]
        assert top(approx, profile, 5) == top(flat, profile, 5)
    for i in range(0, 60, 2):
        store.delete(f"h{i}")
    deleted = {speaker_id for speaker_id, _ in people[::2]}
    # Half the graph is tombstones: a compaction is built beside the live index.
    approx.sync()
    approx.jobs.join()
    for _, profile in people:
        found = set(top(approx, profile, 30))
        assert not found & deleted
        assert found == set(top(flat, profile, 30))  # 30 live speakers: all of them
    assert approx.size(VOX) == 30
    assert all(report.ok for report in approx.verify().values())


def test_hnsw_snapshot_records_type_and_a_type_change_rebuilds(
    make_worker: Callable[..., Worker], rng: np.random.Generator, snapshot_dir: Path
) -> None:
    store, gallery = make_worker(index_spec=HNSW)
    people = [enroll(store, rng, f"s{i}") for i in range(10)]
    store.delete("s0")
    gallery.snapshot()
    _, meta = VectorIndex.load(snapshot_dir / f"{VOX}.faiss")
    assert meta["index_type"] == "hnsw" and meta["hnsw_m"] == 8 and meta["count"] == 9

    _, same = make_worker(index_spec=HNSW, open_=False)
    assert same.open()[VOX].startswith("loaded snapshot")
    for speaker_id, profile in people[1:]:
        assert top(same, profile, 1) == [speaker_id]
    assert people[0][0] not in top(same, people[0][1], 10)

    _, flat = make_worker(open_=False)  # configured flat now: the hnsw snapshot is not used
    assert "index type changed" in flat.open()[VOX]
    assert flat._spaces[VOX].index.spec.kind == "flat"


def test_index_type_setting_reaches_every_space(tiny_registry: Any, tmp_path: Path) -> None:
    from service.bootstrap import build_voicesearch, open_database
    from service.core.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", index_type="hnsw", index_hnsw_m=8)
    engine = open_database(settings)
    try:
        gallery = build_voicesearch(settings, tiny_registry, engine).gallery
        for space in gallery.dims:
            spec = gallery._spaces[space].index.spec
            assert (spec.kind, spec.hnsw_m, spec.ef_search) == ("hnsw", 8, 128)
            assert VectorIndex.load(gallery.snapshot_path(space))[1]["index_type"] == "hnsw"
    finally:
        engine.dispose()
