"""VectorIndex: correctness against brute-force numpy, input validation, snapshot files."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.errors import IndexCorruptError, IndexInputError
from index.snapshot_file import MAGIC, Section
from index.snapshot_file import write as write_snapshot
from index.spec import IndexSpec
from index.vector_index import VectorIndex

DIM = 16


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(
    ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_upsert_remove_search_match_numpy(rng: np.random.Generator) -> None:
    index = VectorIndex(DIM)
    model: dict[int, np.ndarray] = {}

    ids = rng.choice(10_000, size=300, replace=False).astype(np.int64)
    vectors = unit(rng, 300)
    index.upsert(ids, vectors)
    model.update(zip(ids.tolist(), vectors, strict=True))

    # Replace some (few → reverse-map probe path) and many (→ vectorised path).
    for count in (5, 120):
        chosen = rng.choice(ids, size=count, replace=False)
        fresh = unit(rng, count)
        index.upsert(chosen, fresh)
        model.update(zip(chosen.tolist(), fresh, strict=True))

    gone = rng.choice(ids, size=50, replace=False)
    assert index.remove(np.concatenate([gone, [999_999]])) == 50
    for key in gone.tolist():
        model.pop(key)
    assert index.remove(gone) == 0  # already gone: no-op

    assert index.ntotal == len(model)
    assert sorted(index.ids().tolist()) == sorted(model)

    model_ids = np.array(sorted(model), dtype=np.int64)
    model_vectors = np.stack([model[i] for i in model_ids.tolist()])
    queries = unit(rng, 7)
    scores, found = index.search(queries, 10)
    want_scores, want_ids = brute_force(model_ids, model_vectors, queries, 10)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert (found == want_ids).all()

    np.testing.assert_allclose(index.reconstruct(model_ids[:20]), model_vectors[:20], atol=1e-7)
    all_ids, all_vectors = index.vectors()
    order = np.argsort(all_ids)
    np.testing.assert_allclose(all_vectors[order], model_vectors, atol=1e-7)


def test_search_edge_cases(rng: np.random.Generator) -> None:
    index = VectorIndex(DIM)
    scores, ids = index.search(unit(rng, 3), 5)
    assert scores.shape == (3, 0) and ids.shape == (3, 0)

    index.upsert(np.array([7, 8]), unit(rng, 2))
    scores, ids = index.search(unit(rng, 1)[0], 10)  # 1-D query = one row; k clamped
    assert scores.shape == (1, 2)
    assert set(ids[0].tolist()) == {7, 8}
    assert (ids >= 0).all()  # no -1 padding


def test_search_thread_override_is_scoped(rng: np.random.Generator) -> None:
    index = VectorIndex(DIM)
    index.upsert(np.arange(200), unit(rng, 200))
    queries = unit(rng, 3)
    before = faiss.omp_get_max_threads()
    single = index.search(queries, 5, threads=1)
    assert faiss.omp_get_max_threads() == before
    for a, b in zip(single, index.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        (np.array([1]), np.zeros((1, DIM + 1), np.float32), "dimension"),
        (np.array([1]), np.full((1, DIM), np.nan, np.float32), "NaN"),
        (np.array([1]), np.ones((1, DIM), np.int32), "float32"),
        (np.array([1.5]), np.ones((1, DIM), np.float32), "int"),
        (np.array([-1]), np.ones((1, DIM), np.float32), ">= 0"),
        (np.array([1, 1]), np.ones((2, DIM), np.float32), "duplicate"),
        (np.array([1, 2]), np.ones((1, DIM), np.float32), "2 ids but 1 vectors"),
        (np.array([1]), [[0.0] * DIM], "numpy array"),
    ],
)
def test_invalid_input_is_rejected(ids: object, vectors: object, message: str) -> None:
    index = VectorIndex(DIM)
    with pytest.raises(IndexInputError, match=message):
        index.upsert(ids, vectors)
    assert index.ntotal == 0


def test_query_dimension_mismatch_and_bad_k(rng: np.random.Generator) -> None:
    index = VectorIndex(DIM)
    index.upsert(np.array([1]), unit(rng, 1))
    with pytest.raises(IndexInputError, match="dimension"):
        index.search(unit(rng, 1, DIM * 2), 1)
    with pytest.raises(IndexInputError, match="k must be"):
        index.search(unit(rng, 1), 0)
    with pytest.raises(IndexInputError, match="not in index"):
        index.reconstruct([2])
    with pytest.raises(IndexInputError, match="already in index"):
        index.add(np.array([1]), unit(rng, 1))


def test_save_load_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    index = VectorIndex(DIM)
    ids = np.arange(100, 200, dtype=np.int64)
    index.upsert(ids, unit(rng, 100))
    path = tmp_path / "snap" / "voxceleb.faiss"
    index.save(path, {"space": "voxceleb", "seq": 42})

    loaded, meta = VectorIndex.load(path)
    assert meta == {
        "space": "voxceleb",
        "seq": 42,
        "dim": DIM,
        "count": 100,
        "index_type": "flat",
    }
    assert loaded.dim == DIM and loaded.ntotal == 100
    queries = unit(rng, 4)
    for a, b in zip(index.search(queries, 5), loaded.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    # The loaded index is fully functional (reverse map restored).
    loaded.upsert(np.array([150]), unit(rng, 1))
    assert loaded.ntotal == 100
    # Nothing but the snapshot is left behind in the directory.
    assert [p.name for p in path.parent.iterdir()] == ["voxceleb.faiss"]


def test_empty_index_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "empty.faiss"
    VectorIndex(DIM).save(path, {})
    loaded, meta = VectorIndex.load(path)
    assert loaded.ntotal == 0 and meta["count"] == 0


@pytest.fixture
def snapshot_bytes(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, bytes]:
    index = VectorIndex(DIM)
    index.upsert(np.arange(50), unit(rng, 50))
    path = tmp_path / "s.faiss"
    index.save(path, {"space": "x"})
    return path, path.read_bytes()


@pytest.mark.parametrize("cut", [0, 10, 30, -33, -1])
def test_truncated_snapshot_is_corrupt(snapshot_bytes: tuple[Path, bytes], cut: int) -> None:
    path, data = snapshot_bytes
    path.write_bytes(data[:cut])
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(path)


def test_bit_flips_anywhere_are_detected(snapshot_bytes: tuple[Path, bytes]) -> None:
    path, data = snapshot_bytes
    # Header, meta, FAISS payload, checksum — every region must be covered.
    for position in (0, 9, 14, 20, len(data) // 2, len(data) - 40, len(data) - 1):
        flipped = bytearray(data)
        flipped[position] ^= 0x04
        path.write_bytes(bytes(flipped))
        with pytest.raises(IndexCorruptError):
            VectorIndex.load(path)


def test_trailing_garbage_and_foreign_files(snapshot_bytes: tuple[Path, bytes]) -> None:
    path, data = snapshot_bytes
    path.write_bytes(data + b"\0")
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(path)
    path.write_bytes(b"not an index at all, but long enough to have a header" * 3)
    with pytest.raises(IndexCorruptError, match="magic"):
        VectorIndex.load(path)
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(path.with_name("absent.faiss"))


def test_valid_checksum_over_inconsistent_content_is_corrupt(tmp_path: Path) -> None:
    # Well-formed file whose meta lies about the contents (e.g. written by a buggy tool).
    index = VectorIndex(DIM)
    index.upsert(np.arange(3), np.eye(3, DIM, dtype=np.float32))
    path = tmp_path / "lie.faiss"
    meta, sections = index.snapshot_parts({})
    write_snapshot(path, {**meta, "count": 4}, sections)
    with pytest.raises(IndexCorruptError, match="meta says 4"):
        VectorIndex.load(path)
    garbage = Section.of("faiss", np.frombuffer(b"garbage!" * 8, np.uint8))
    write_snapshot(path, {"dim": DIM, "count": 0}, [garbage])
    assert path.read_bytes().startswith(MAGIC)
    with pytest.raises(IndexCorruptError, match="FAISS"):
        VectorIndex.load(path)


def test_failed_write_keeps_old_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = VectorIndex(DIM)
    index.upsert(np.arange(3), np.eye(3, DIM, dtype=np.float32))
    path = tmp_path / "keep.faiss"
    index.save(path, {"v": 1})

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        index.save(path, {"v": 2})
    monkeypatch.undo()
    assert VectorIndex.load(path)[1]["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.faiss"]  # temp file cleaned up


# ------------------------------------------------------------------ HNSW (approximate) index
HNSW = IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=64, ef_search=64)


def test_hnsw_matches_flat_on_small_data(rng: np.random.Generator) -> None:
    ids = rng.choice(100_000, size=2000, replace=False).astype(np.int64)
    vectors = unit(rng, 2000)
    flat, hnsw = VectorIndex(DIM), VectorIndex(DIM, spec=HNSW)
    flat.upsert(ids, vectors)
    hnsw.upsert(ids, vectors)
    queries = unit(rng, 50)
    _, exact = flat.search(queries, 10)
    _, approx = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95
    # A stored vector finds itself first.
    _, top = hnsw.search(vectors[:20], 1)
    assert top[:, 0].tolist() == ids[:20].tolist()


def test_hnsw_deleted_and_replaced_vectors_are_never_returned(rng: np.random.Generator) -> None:
    spec = IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=64, ef_search=64, compact_fraction=1.0)
    index = VectorIndex(DIM, spec=spec)
    ids = np.arange(1000, dtype=np.int64)
    vectors = unit(rng, 1000)
    index.add(ids, vectors)
    gone = ids[::3]
    assert index.remove(gone) == gone.size
    assert index.remove(gone) == 0
    replaced = ids[1::3][:100]
    fresh = unit(rng, 100)
    index.upsert(replaced, fresh)
    assert index.tombstones == gone.size + replaced.size
    assert index.ntotal == 1000 - gone.size
    assert not index.contains(gone).any() and index.contains(replaced).all()
    # Query with the deleted vectors themselves: the nearest entries are gone, never returned.
    scores, found = index.search(vectors[gone], 20)
    assert not np.isin(found, gone).any()
    # Old vectors of replaced ids are not returned: a replaced id scores with its new vector.
    scores, found = index.search(vectors[replaced], 5)
    for row_scores, row_ids, old in zip(scores, found, vectors[replaced], strict=True):
        for score, key in zip(row_scores, row_ids, strict=True):
            if key >= 0:
                current = index.reconstruct([key])[0]
                assert score == pytest.approx(float(current @ old), abs=1e-5)
    np.testing.assert_allclose(index.reconstruct(replaced), fresh, atol=1e-6)
    live_ids, live_vectors = index.vectors()
    assert sorted(live_ids.tolist()) == sorted(set(ids.tolist()) - set(gone.tolist()))
    assert live_vectors.shape == (live_ids.size, DIM)


def test_hnsw_asks_for_a_rebuild_when_tombstones_pile_up(rng: np.random.Generator) -> None:
    spec = IndexSpec(kind="hnsw", hnsw_m=8, ef_construction=32, compact_fraction=0.25)
    index = VectorIndex(DIM, spec=spec)
    index.add(np.arange(400), unit(rng, 400))
    index.remove(np.arange(50))
    assert index.tombstones == 50 and index.needs_rebuild is None  # 50 / 400 < 25 %
    index.remove(np.arange(50, 120))
    assert index.needs_rebuild and "tombstones" in index.needs_rebuild
    # The rebuild is a new index beside this one (the owner swaps it in); this one is intact.
    fresh = index.compacted()
    assert fresh.tombstones == 0 and fresh.ntotal == 280 and index.tombstones == 120
    _, found = fresh.search(unit(rng, 10), 10)
    assert (found >= 120).all()


def test_hnsw_save_load_keeps_type_params_and_tombstones(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    spec = IndexSpec(kind="hnsw", hnsw_m=12, ef_construction=40, compact_fraction=1.0)
    index = VectorIndex(DIM, spec=spec)
    index.add(np.arange(300), unit(rng, 300))
    index.remove(np.arange(0, 300, 7))
    path = tmp_path / "hnsw.faiss"
    index.save(path, {"seq": 1})
    loaded, meta = VectorIndex.load(path)
    assert meta["index_type"] == "hnsw" and meta["hnsw_m"] == 12
    assert meta["count"] == index.ntotal == loaded.ntotal
    assert loaded.spec.kind == "hnsw" and loaded.spec.hnsw_m == 12
    assert loaded.spec.ef_construction == 40
    assert loaded.tombstones == index.tombstones
    queries = unit(rng, 5)
    for a, b in zip(index.search(queries, 5), loaded.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.isin(loaded.ids(), np.arange(0, 300, 7)).any()


def test_index_spec_validation() -> None:
    with pytest.raises(IndexInputError):
        IndexSpec(kind="ivf")
    with pytest.raises(IndexInputError, match="resolve"):
        VectorIndex(DIM, spec=IndexSpec(kind="auto"))
    with pytest.raises(IndexInputError):
        IndexSpec(kind="hnsw", hnsw_m=0)
