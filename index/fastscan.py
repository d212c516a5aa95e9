"""The ``fastscan`` kind: a compressed scan of every vector, then an exact re-rank.

Why this shape (bench/RESULTS.md has the numbers): speaker embeddings have no cluster structure
an inverted file or a graph could use — two different speakers' cosine is ~0.1 +- 0.09 in 192
dimensions, and the 9 impostors in a probe's top 10 are a random draw from that tail — so any
index must look at (nearly) every vector. Looking at 48 bytes instead of 768 per vector is what
makes a million fit in a few milliseconds:

1. every row is encoded as a 4-bit product-quantisation code (FAISS ``IndexPQFastScan``, one
   sub-quantiser per ``fastscan_dims_per_code`` dimensions) and the codes are scanned with SIMD
   lookup tables: an approximate score for every row;
2. the best ``max(rerank, 4 k)`` rows are re-scored exactly from their float vectors
   (:class:`index.rows.RowStore`) and the top ``k`` of those are returned — with exact scores.

Rows appended since the last encoding (at most ``PENDING_LIMIT``; codes are appended in batches
because FAISS reallocates the whole code table on every growth) and every row of an index too
small to train a quantiser (< ``MIN_TRAIN``) are scored exactly, always.

Removal is a tombstone (the row's id becomes ``TOMBSTONE``; candidates with it are dropped before
re-ranking), so deleted and replaced vectors are never returned. Tombstones still take candidate
slots, so past ``compact_fraction`` of the rows :attr:`FastScanBackend.needs_rebuild` asks the
owner to rebuild beside the live index. A quantiser trained on far fewer vectors than the
gallery now holds asks for the same.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from index.errors import IndexCorruptError
from index.rows import IdPositions, RowStore
from index.spec import IndexSpec

#: Below this many rows no quantiser is trained: the rows are scanned exactly.
MIN_TRAIN = 1000
#: Rows kept uncoded (scored exactly) before they are encoded in one batch.
PENDING_LIMIT = 4096


def sub_quantisers(dim: int, dims_per_code: int) -> int:
    return dim // dims_per_code if dim % dims_per_code == 0 else dim


class FastScanBackend:
    def __init__(
        self,
        dim: int,
        spec: IndexSpec,
        rows: RowStore | None = None,
        coarse: Any = None,
        trained_on: int = 0,
    ) -> None:
        self.dim = dim
        self.spec = spec
        self.rows = rows if rows is not None else RowStore(dim)
        self.coarse = coarse  # faiss.IndexPQFastScan holding codes of rows [0, coarse.ntotal)
        self.trained_on = trained_on if coarse is not None else 0
        self.positions = IdPositions()
        ids = self.rows.ids
        alive = np.flatnonzero(ids >= 0)
        self.positions.set(ids[alive], alive.astype(np.int64))
        self.tombstones = int(ids.size - alive.size)

    # ------------------------------------------------------------------ state
    @property
    def physical(self) -> int:
        return len(self.rows)

    @property
    def coded(self) -> int:
        return int(self.coarse.ntotal) if self.coarse is not None else 0

    @property
    def needs_rebuild(self) -> str | None:
        physical = self.physical
        if self.tombstones and self.tombstones > self.spec.compact_fraction * physical:
            return f"{self.tombstones} of {physical} rows are tombstones"
        live = physical - self.tombstones
        if self.coarse is None and live >= MIN_TRAIN:
            return f"{live} vectors and no trained quantiser"
        if self.coarse is not None and self.trained_on * 4 < min(self.spec.train_size, live):
            return f"quantiser trained on {self.trained_on} vectors, {live} indexed"
        return None

    # ------------------------------------------------------------------ changes
    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.positions.get(ids) >= 0

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        positions = self.rows.append(ids, vectors)
        self.positions.set(ids, positions)
        if self.coarse is not None and self.physical - self.coded >= PENDING_LIMIT:
            self._encode_pending()

    def _encode_pending(self) -> None:
        start = self.coded
        for first, block in self.rows.blocks():
            end = first + block.shape[0]
            if end <= start:
                continue
            self.coarse.add(np.ascontiguousarray(block[max(0, start - first) :]))
            start = end

    def drop(self, ids: np.ndarray) -> int:
        positions = self.positions.get(ids)
        self.rows.remove(positions)
        self.positions.drop(ids)
        self.tombstones += int(ids.size)
        return int(ids.size)

    def prepare(self) -> None:
        """Train the quantiser on a sample of the live rows and encode every row (a build)."""
        live = self.physical - self.tombstones
        if live < MIN_TRAIN:
            return
        rng = np.random.default_rng(live)
        alive = np.flatnonzero(self.rows.ids >= 0)
        sample = np.sort(rng.choice(alive, size=min(self.spec.train_size, live), replace=False))
        m = sub_quantisers(self.dim, self.spec.fastscan_dims_per_code)
        coarse = faiss.IndexPQFastScan(self.dim, m, 4, faiss.METRIC_INNER_PRODUCT)
        # One OpenMP thread for training: k-means of m tiny sub-quantisers is thousands of short
        # parallel regions, and on a shared 2-core host each barrier waits for a time slice
        # (measured under load: 3.3 s with one thread, 75 s with two). The setting is per
        # thread, so restoring it leaves other threads alone.
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            coarse.train(self.rows.gather(sample))
        finally:
            faiss.omp_set_num_threads(previous)
        self.coarse = coarse
        self.trained_on = int(sample.size)
        self._encode_pending()

    # ------------------------------------------------------------------ reads
    def search(self, queries: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        m = queries.shape[0]
        scores = np.full((m, kk), -np.inf, dtype=np.float32)
        found = np.full((m, kk), -1, dtype=np.int64)
        ids = self.rows.ids
        coded = self.coded
        candidates: np.ndarray | None = None
        if coded:
            depth = min(max(self.spec.rerank, 4 * kk), coded)
            _, candidates = self.coarse.search(queries, depth)
        # Uncoded rows are scored exactly, straight from their blocks (no copy).
        pending_pos: list[np.ndarray] = []
        pending_scores: list[np.ndarray] = []
        for first, block in self.rows.blocks():
            lo = max(coded - first, 0)
            if lo >= block.shape[0]:
                continue
            pending_pos.append(np.arange(first + lo, first + block.shape[0], dtype=np.int64))
            pending_scores.append(block[lo:] @ queries.T)
        pos_p = np.concatenate(pending_pos) if pending_pos else np.empty(0, np.int64)
        score_p = np.concatenate(pending_scores) if pending_scores else np.empty((0, m), np.float32)
        for row in range(m):
            cand, exact = pos_p, score_p[:, row]
            if candidates is not None:
                coarse_cand = candidates[row]
                coarse_cand = coarse_cand[coarse_cand >= 0]
                coarse_cand = coarse_cand[ids[coarse_cand] >= 0]
                cand = np.concatenate([coarse_cand, pos_p])
                exact = np.concatenate([self.rows.gather(coarse_cand) @ queries[row], exact])
            alive = ids[cand] >= 0
            if not alive.all():
                cand, exact = cand[alive], exact[alive]
            if not cand.size:
                continue
            take = min(kk, cand.size)
            top = np.argpartition(-exact, take - 1)[:take] if take < cand.size else np.arange(take)
            top = top[np.argsort(-exact[top], kind="stable")]
            scores[row, :take] = exact[top]
            found[row, :take] = ids[cand[top]]
        return scores, found

    def ids(self) -> np.ndarray:
        ids = self.rows.ids
        return ids[ids >= 0].copy()

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.rows.gather(self.positions.get(ids))

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        ids = self.rows.ids
        out_ids, out_vectors = [], []
        for start, block in self.rows.blocks():
            alive = ids[start : start + block.shape[0]] >= 0
            out_ids.append(ids[start : start + block.shape[0]][alive])
            out_vectors.append(block[alive])
        if not out_ids:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dim), dtype=np.float32)
        return np.concatenate(out_ids), np.concatenate(out_vectors)

    def compacted(self) -> FastScanBackend:
        fresh = FastScanBackend(self.dim, self.spec)
        ids, vectors = self.vectors()
        if ids.size:
            fresh.add(ids, vectors)
        fresh.prepare()
        return fresh

    # ------------------------------------------------------------------ persistence
    def snapshot_parts(self) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, ...]]]:
        """Meta and sections of a snapshot as of now. The code table and ids are copied (tens of
        MB, fast); the float rows are handed out as views: rows never change once written, so
        they can be written out after the caller's lock is released."""
        physical = self.physical
        coarse = (
            faiss.serialize_index(self.coarse)
            if self.coarse is not None
            else np.empty(0, dtype=np.uint8)
        )
        meta = {"rows": physical, "coded": self.coded, "trained_on": self.trained_on}
        rows = tuple(block for _, block in self.rows.blocks(physical))
        return meta, {
            "coarse": (coarse,),
            "ids": (self.rows.ids.copy(),),
            "rows": rows or (np.empty((0, self.dim), dtype=np.float32),),
        }

    @classmethod
    def open(
        cls, dim: int, spec: IndexSpec, meta: dict[str, Any], snapshot: Any
    ) -> FastScanBackend:
        """From an open ``index.snapshot_file.Snapshot``: rows memory-mapped (checked lazily),
        ids and codes copied (checked now)."""
        physical = meta.get("rows")
        coded = meta.get("coded")
        if not isinstance(physical, int) or not isinstance(coded, int) or coded > physical:
            raise IndexCorruptError("fastscan snapshot lacks valid row counts")
        snapshot.check("coarse")
        snapshot.check("ids")
        snapshot.check("rows", lazily=True)
        rows = snapshot.array("rows", np.float32, (physical, dim))
        ids = snapshot.array("ids", np.int64, (physical,))
        coarse = None
        if coded:
            try:
                coarse = faiss.deserialize_index(np.array(snapshot.raw("coarse")))
            except RuntimeError as error:
                raise IndexCorruptError(f"FAISS could not read the codes: {error}") from None
            if not isinstance(coarse, faiss.IndexPQFastScan) or coarse.d != dim:
                raise IndexCorruptError("fastscan snapshot holds an unexpected code index")
            if int(coarse.ntotal) != coded:
                raise IndexCorruptError(f"{coarse.ntotal} codes, meta says {coded}")
            if sub_quantisers(dim, spec.fastscan_dims_per_code) != coarse.pq.M:
                raise IndexCorruptError("code size does not match fastscan_dims_per_code")
        store = RowStore(dim, rows, ids)
        return cls(dim, spec, store, coarse, int(meta.get("trained_on") or 0))
