"""The ``flat`` and ``hnsw`` kinds: one FAISS index inside ``IndexIDMap2``.

``flat`` wraps ``faiss.IndexFlatIP``: exact search (profiles are unit vectors, so inner product =
cosine similarity), arbitrary int64 ids, ``reconstruct`` by id (the "2" keeps a reverse map).

``hnsw`` wraps ``faiss.IndexHNSWFlat`` (inner product). An HNSW graph cannot remove nodes, so
removal is a *tombstone*: the entry's slot in the id map is overwritten with ``TOMBSTONE`` (a
negative id), and every search passes an ``IDSelectorRange(0, ...)`` that excludes negative ids,
so a deleted or replaced vector is never returned (exactly, not approximately). Tombstones are
part of the serialised id map, so snapshots keep them; when they pile up the owner rebuilds the
index (``needs_rebuild``), beside the live one.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from index.errors import IndexCorruptError
from index.rows import TOMBSTONE
from index.spec import INDEX_FLAT, INDEX_HNSW, IndexSpec

_ALIVE_MAX = 1 << 62  # IDSelectorRange upper bound: every valid (>= 0) id is below it
# Below this many ids a membership probe through IndexIDMap2's reverse map (O(1) each) beats a
# vectorised scan of the whole id array (O(ntotal)).
_PROBE_LIMIT = 64


def new_faiss_index(spec: IndexSpec, dim: int) -> Any:
    if spec.kind == INDEX_FLAT:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    hnsw = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = spec.ef_construction
    hnsw.hnsw.efSearch = spec.ef_search
    return faiss.IndexIDMap2(hnsw)


def spec_of(faiss_index: Any) -> IndexSpec:
    """The spec a deserialised ``IndexIDMap2`` was built with (run-time fields: defaults)."""
    if not isinstance(faiss_index, faiss.IndexIDMap2):
        raise IndexCorruptError(f"unexpected index type {type(faiss_index).__name__}")
    inner = faiss.downcast_index(faiss_index.index)
    if isinstance(inner, faiss.IndexHNSWFlat):
        return IndexSpec(
            kind=INDEX_HNSW,
            hnsw_m=int(inner.hnsw.nb_neighbors(1)),
            ef_construction=int(inner.hnsw.efConstruction),
            ef_search=int(inner.hnsw.efSearch),
        )
    if isinstance(inner, faiss.IndexFlatIP):
        return IndexSpec()
    raise IndexCorruptError(f"unsupported inner index type {type(inner).__name__}")


class IdMapBackend:
    """Flat or HNSW search over an ``IndexIDMap2`` (see the module docstring)."""

    def __init__(self, dim: int, spec: IndexSpec, faiss_index: Any = None) -> None:
        self.dim = dim
        self.spec = spec
        self._index = faiss_index if faiss_index is not None else new_faiss_index(spec, dim)
        self._hnsw = spec.kind == INDEX_HNSW
        self.tombstones = int(np.count_nonzero(self._id_view() < 0)) if self._hnsw else 0
        self._alive = faiss.IDSelectorRange(0, _ALIVE_MAX)

    @property
    def physical(self) -> int:
        return int(self._index.ntotal)

    def _id_view(self) -> np.ndarray:
        """Zero-copy view of the id array (position -> id). Valid only until the next change."""
        n = int(self._index.ntotal)  # physical slots, tombstones (negative) included
        if n == 0:
            return np.empty(0, dtype=np.int64)
        return faiss.rev_swig_ptr(self._index.id_map.data(), n)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        if self.physical - self.tombstones == 0 or ids.size == 0:
            return np.zeros(ids.shape, dtype=bool)
        # HNSW: the reverse map still knows tombstoned ids, so only the id map is authoritative.
        if ids.size <= _PROBE_LIMIT and not self._hnsw:
            mask = np.zeros(ids.shape, dtype=bool)
            buffer = np.empty(self.dim, dtype=np.float32)
            for i, key in enumerate(ids.tolist()):
                try:
                    self._index.reconstruct(key, buffer)
                    mask[i] = True
                except RuntimeError:  # "key not found" from the reverse map
                    pass
            return mask
        return np.isin(ids, self._id_view())

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, ids)

    def drop(self, ids: np.ndarray) -> int:
        """Remove ids known to be present: physically (flat) or by tombstone (HNSW)."""
        if not self._hnsw:
            return int(self._index.remove_ids(ids))
        view = self._id_view()
        positions = np.flatnonzero(np.isin(view, ids))
        view[positions] = TOMBSTONE
        self.tombstones += int(positions.size)
        return int(np.unique(ids).size)

    def search(self, queries: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        params = None
        if self._hnsw:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.spec.ef_search, kk)
            if self.tombstones:
                params.sel = self._alive
        return self._index.search(queries, kk, params=params)

    def ids(self) -> np.ndarray:
        view = self._id_view()
        return view[view >= 0] if self.tombstones else view.copy()

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(ids)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.physical
        if n - self.tombstones == 0:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dim), dtype=np.float32)
        flat = faiss.downcast_index(self._index.index)
        if self._hnsw:
            flat = faiss.downcast_index(flat.storage)
        data = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        if self.tombstones:
            alive = self._id_view() >= 0
            return self._id_view()[alive], data[alive]
        return self.ids(), data.copy()

    def compacted(self) -> IdMapBackend:
        """A new backend holding only the live entries (the old one is left as it is)."""
        fresh = IdMapBackend(self.dim, self.spec)
        ids, vectors = self.vectors()
        if ids.size:
            fresh.add(ids, vectors)
        return fresh

    def serialize(self) -> np.ndarray:
        """The FAISS bytes (a copy; cheap enough to take under a lock and write out later)."""
        return faiss.serialize_index(self._index)

    @classmethod
    def deserialize(cls, dim: int, blob: np.ndarray) -> IdMapBackend:
        failure: str | None = None
        try:
            faiss_index = faiss.deserialize_index(blob)
        except RuntimeError as error:
            failure = str(error)
        if failure is not None:
            raise IndexCorruptError(f"FAISS could not read the index: {failure}")
        spec = spec_of(faiss_index)
        if faiss_index.d != dim:
            raise IndexCorruptError(f"index dimension {faiss_index.d} != meta {dim}")
        return cls(dim, spec, faiss_index)
