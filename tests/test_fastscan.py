"""The fastscan index kind: recall against exact search, exact deletes/replacements, incremental
adds without a rebuild, snapshots that are memory-mapped and still checked, and ``auto``.

Vectors are drawn like speaker embeddings (a query is one stored vector plus noise), in 64
dimensions so that training a quantiser takes milliseconds; bench/bench_search.py measures the
real 192-dimension case at 10k-1M.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from index import snapshot_file
from index.errors import IndexCorruptError
from index.fastscan import MIN_TRAIN, PENDING_LIMIT
from index.spec import IndexSpec
from index.vector_index import VectorIndex
from tests.test_index import brute_force

DIM = 64
SPEC = IndexSpec(kind="fastscan", rerank=200, train_size=1500)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Two OpenMP threads on a shared 2-core host spend their time in barriers; one is faster.
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(77)


def built(rng: np.random.Generator, n: int = 4000) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    ids = np.arange(10, 10 + n, dtype=np.int64)
    vectors = unit(rng.standard_normal((n, DIM)))
    index = VectorIndex(DIM, spec=SPEC)
    index.add(ids, vectors, assume_new=True)
    index.prepare()
    return index, ids, vectors


def probes(rng: np.random.Generator, vectors: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    rows = rng.choice(vectors.shape[0], size=m, replace=False)
    return unit(vectors[rows] + 0.08 * rng.standard_normal((m, DIM))), rows


def test_recall_against_exact_and_scores_are_brute_force(rng: np.random.Generator) -> None:
    index, ids, vectors = built(rng)
    assert index.spec.kind == "fastscan" and index.needs_rebuild is None
    queries, truth = probes(rng, vectors, 100)
    scores, found = index.search(queries, 10)
    want_scores, want_ids = brute_force(ids, vectors, queries, 10)
    recall = np.mean([len(set(f) & set(w)) / 10 for f, w in zip(found, want_ids, strict=True)])
    assert recall >= 0.99
    assert (found[:, 0] == ids[truth]).all()  # the true speaker is first whenever exact has it
    # Scores are exact inner products (re-ranked from the float rows), not code estimates.
    np.testing.assert_allclose(
        scores, np.einsum("qd,qkd->qk", queries, vectors[found - 10]), atol=1e-5
    )
    np.testing.assert_allclose(scores[:, 0], want_scores[:, 0], atol=1e-5)


def test_deletes_and_replacements_are_brute_force(rng: np.random.Generator) -> None:
    index, ids, vectors = built(rng)
    gone = ids[:500]
    assert index.remove(gone) == 500 and index.ntotal == ids.size - 500
    replaced = ids[500:600]
    fresh = unit(rng.standard_normal((100, DIM)))
    index.upsert(replaced, fresh)
    assert index.ntotal == ids.size - 500 and index.tombstones == 600
    # A deleted vector, searched for itself, is never returned.
    _, found = index.search(vectors[:500], 10)
    assert not np.isin(found, gone).any()
    # A replaced id answers with its new vector only: searching the old one does not score ~1.
    scores, found = index.search(vectors[500:600], 10)
    old_hits = found == replaced[:, None]
    assert (scores[old_hits] < 0.9).all()
    scores, found = index.search(fresh, 1)
    assert (found[:, 0] == replaced).all()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(index.reconstruct(replaced), fresh, atol=1e-7)


def test_incremental_adds_need_no_rebuild(rng: np.random.Generator) -> None:
    index, ids, vectors = built(rng)
    # More than PENDING_LIMIT new rows: some are encoded in a batch, the rest stay exact.
    more = PENDING_LIMIT + 300
    new_ids = np.arange(100_000, 100_000 + more, dtype=np.int64)
    new_vectors = unit(rng.standard_normal((more, DIM)))
    for start in range(0, more, 1000):
        index.add(new_ids[start : start + 1000], new_vectors[start : start + 1000])
    assert (
        index.needs_rebuild is None
    )  # quantiser trained on 1500 of ~8400 (4x covers it): still good
    assert index.ntotal == ids.size + more
    all_ids = np.concatenate([ids, new_ids])
    all_vectors = np.concatenate([vectors, new_vectors])
    queries, truth = probes(rng, all_vectors, 100)
    _, found = index.search(queries, 10)
    _, want = brute_force(all_ids, all_vectors, queries, 10)
    assert (found[:, 0] == all_ids[truth]).all()
    assert np.mean([len(set(f) & set(w)) / 10 for f, w in zip(found, want, strict=True)]) >= 0.99


def test_small_index_is_scanned_exactly_until_trained(rng: np.random.Generator) -> None:
    index = VectorIndex(DIM, spec=SPEC)
    vectors = unit(rng.standard_normal((MIN_TRAIN - 1, DIM)))
    index.add(np.arange(MIN_TRAIN - 1), vectors)
    index.prepare()  # too few to train: exact
    assert index.needs_rebuild is None
    queries = unit(rng.standard_normal((5, DIM)))
    scores, found = index.search(queries, 10)
    want_scores, want_ids = brute_force(np.arange(MIN_TRAIN - 1), vectors, queries, 10)
    assert (found == want_ids).all()
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    index.add(np.arange(MIN_TRAIN, MIN_TRAIN + 10), unit(rng.standard_normal((10, DIM))))
    assert "no trained quantiser" in (index.needs_rebuild or "")


def test_tombstones_ask_for_a_rebuild_beside_the_live_index(rng: np.random.Generator) -> None:
    index, ids, vectors = built(rng)
    index.remove(ids[: ids.size // 4])
    assert index.needs_rebuild and "tombstones" in index.needs_rebuild
    fresh = index.compacted()
    assert fresh.tombstones == 0 and fresh.ntotal == index.ntotal and fresh.needs_rebuild is None
    assert index.tombstones == ids.size // 4  # the live index is untouched
    queries, _ = probes(rng, vectors[ids.size // 4 :], 20)
    assert (fresh.search(queries, 5)[1] == index.search(queries, 5)[1]).all()


def test_snapshot_is_mapped_and_a_flipped_row_byte_is_found(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64 KiB checksum blocks: 4000 x 64 floats are 16 blocks, so most are checked later.
    monkeypatch.setattr(snapshot_file, "BLOCK", 1 << 16)
    index, ids, vectors = built(rng)
    index.remove(ids[:7])
    path = tmp_path / "fs.faiss"
    index.save(path, {"space": "voxceleb"})
    loaded, meta = VectorIndex.load(path)
    loaded.set_runtime_options(SPEC)  # rerank is a setting, not stored in the snapshot
    assert meta["index_type"] == "fastscan" and meta["space"] == "voxceleb"
    assert loaded.ntotal == index.ntotal and loaded.tombstones == 7
    queries, _ = probes(rng, vectors, 20)
    for a, b in zip(loaded.search(queries, 10), index.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    # Writes after loading go to owned blocks, never into the mapped file.
    loaded.upsert(ids[100:101], unit(rng.standard_normal((1, DIM))))
    assert VectorIndex.load(path)[0].ntotal == index.ntotal

    data = bytearray(path.read_bytes())
    rows_entry = next(s for s in meta_sections(path) if s["name"] == "rows")
    data[rows_entry["offset"] + 5 * (1 << 16) + 7] ^= 0x40  # inside block 5 of the rows
    path.write_bytes(bytes(data))
    try:
        bad, _ = VectorIndex.load(path)
    except IndexCorruptError as error:  # the block happened to be in the sample
        assert "checksum" in str(error)
        return
    assert bad.source is not None and bad.source.pending
    with pytest.raises(IndexCorruptError, match="checksum"):
        bad.source.verify_rest()


def meta_sections(path: Path) -> list[dict]:
    return snapshot_file.read(path).meta["sections"]


def test_auto_picks_by_size_with_hysteresis() -> None:
    auto = IndexSpec(kind="auto", auto_threshold=1000)
    assert auto.resolve(999).kind == "flat" and auto.resolve(1000).kind == "fastscan"
    flat, fast = auto.resolve(10).meta(), auto.resolve(5000).meta()
    # A built index is kept within a factor 2 of the threshold, so it does not flap.
    assert auto.accepts(flat, 1500) and not auto.accepts(flat, 2000)
    assert auto.accepts(fast, 600) and not auto.accepts(fast, 400)
    assert not IndexSpec(kind="flat").accepts(fast, 10)
