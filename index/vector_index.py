"""An inner-product index over int64 ids — exact, graph or compressed-scan — and its snapshot.

``VectorIndex`` checks every input (dtype, shape, dimension, finiteness, ids >= 0) and hands the
work to one backend, chosen by ``IndexSpec.kind`` (``index.spec``):

* ``flat`` / ``hnsw``: ``index.idmap.IdMapBackend`` (FAISS inside ``IndexIDMap2``);
* ``fastscan``: ``index.fastscan.FastScanBackend`` (4-bit codes scanned, top candidates re-scored
  exactly from float vectors).

It knows vectors and ids only — never speakers — and is not thread-safe for concurrent
modification: callers serialise writes against searches (``service.search.gallery.Gallery``).
Heavy maintenance (HNSW/fastscan compaction, quantiser training) is never done inside a write:
:attr:`VectorIndex.needs_rebuild` says when it is due, and the owner builds a fresh index beside
this one and swaps it in.

Snapshots (``index.snapshot_file``, format version 2) hold the backend's sections; a fastscan
snapshot's float rows are memory-mapped on load instead of copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import snapshot_file
from index.errors import IndexCorruptError, IndexInputError
from index.fastscan import FastScanBackend
from index.idmap import IdMapBackend
from index.spec import INDEX_FASTSCAN, INDEX_FLAT, INDEX_KINDS, IndexSpec

Backend = IdMapBackend | FastScanBackend


def _as_ids(ids: object, *, name: str = "ids") -> np.ndarray:
    array = np.asarray(ids)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise IndexInputError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise IndexInputError(f"{name} must be integers (int64), got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.int64)
    if array.size and array.min() < 0:
        # -1 is FAISS's "no result" marker; negative ids would be indistinguishable from it.
        raise IndexInputError(f"{name} must be >= 0")
    return array


class VectorIndex:
    """Inner-product search over ``dim``-dimensional float32 vectors keyed by int64 ids."""

    def __init__(self, dim: int, *, spec: IndexSpec | None = None) -> None:
        if int(dim) <= 0:
            raise IndexInputError(f"dim must be positive, got {dim}")
        self._dim = int(dim)
        spec = spec or IndexSpec()
        if spec.kind not in INDEX_KINDS:
            raise IndexInputError(f"cannot build an index of kind {spec.kind!r}: resolve it first")
        self._backend: Backend = (
            FastScanBackend(self._dim, spec)
            if spec.kind == INDEX_FASTSCAN
            else IdMapBackend(self._dim, spec)
        )
        #: The snapshot this index was loaded from (its rows may be mapped), for verify_rest.
        self.source: snapshot_file.Snapshot | None = None

    @classmethod
    def _of(cls, dim: int, backend: Backend) -> VectorIndex:
        index = cls.__new__(cls)
        index._dim = dim
        index._backend = backend
        index.source = None
        return index

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def spec(self) -> IndexSpec:
        return self._backend.spec

    @property
    def ntotal(self) -> int:
        """Live vectors (tombstones excluded)."""
        return self._backend.physical - self._backend.tombstones

    @property
    def tombstones(self) -> int:
        return self._backend.tombstones

    def __len__(self) -> int:
        return self.ntotal

    @property
    def needs_rebuild(self) -> str | None:
        """Why this index should be rebuilt (tombstones piling up, a quantiser to train), or
        None. The rebuild is the owner's job, beside the live index."""
        backend = self._backend
        if isinstance(backend, FastScanBackend):
            return backend.needs_rebuild
        if backend.tombstones and backend.tombstones > backend.spec.compact_fraction * (
            backend.physical
        ):
            return f"{backend.tombstones} of {backend.physical} graph nodes are tombstones"
        return None

    def set_runtime_options(self, spec: IndexSpec) -> None:
        """Apply the run-time options of ``spec`` (ef_search, rerank, …); structure unchanged."""
        self._backend.spec = self._backend.spec.with_runtime(spec)

    # ------------------------------------------------------------------ validation
    def _as_vectors(self, vectors: object, *, name: str = "vectors") -> np.ndarray:
        if not isinstance(vectors, np.ndarray):
            raise IndexInputError(f"{name} must be a numpy array, got {type(vectors).__name__}")
        if vectors.ndim == 1:
            vectors = vectors.reshape(1, -1)
        if vectors.ndim != 2:
            raise IndexInputError(f"{name} must be 2-D (n, dim), got shape {vectors.shape}")
        if vectors.shape[1] != self._dim:
            raise IndexInputError(
                f"{name} have dimension {vectors.shape[1]}, index dimension is {self._dim}"
            )
        if not np.issubdtype(vectors.dtype, np.floating):
            raise IndexInputError(f"{name} must be float32, got dtype {vectors.dtype}")
        out = np.ascontiguousarray(vectors, dtype=np.float32)
        if not np.isfinite(out).all():
            raise IndexInputError(f"{name} contain NaN or infinity")
        return out

    def _ids_and_vectors(self, ids: object, vectors: object) -> tuple[np.ndarray, np.ndarray]:
        """Validated int64 ids and float32 (n, dim) vectors, one vector per id."""
        id_array = _as_ids(ids)
        matrix = self._as_vectors(vectors)
        if matrix.shape[0] != id_array.size:
            raise IndexInputError(f"{id_array.size} ids but {matrix.shape[0]} vectors")
        return id_array, matrix

    # ------------------------------------------------------------------ changes
    def contains(self, ids: object) -> np.ndarray:
        """Boolean mask: which of ``ids`` are in the index."""
        return self._backend.contains(_as_ids(ids))

    def upsert(self, ids: object, vectors: object) -> None:
        """Insert or replace. Existing ids are removed first, in one batch."""
        id_array, matrix = self._ids_and_vectors(ids, vectors)
        if id_array.size == 0:
            return
        if np.unique(id_array).size != id_array.size:
            raise IndexInputError("duplicate ids in one upsert")
        present = self._backend.contains(id_array)
        if present.any():
            self._backend.drop(id_array[present])
        self._backend.add(id_array, matrix)

    def add(self, ids: object, vectors: object, *, assume_new: bool = False) -> None:
        """Insert ids that are not in the index yet (bulk loading). ``assume_new=True`` skips
        the membership check — for callers that guarantee it (a rebuild reading ids in strictly
        increasing order into a fresh index); a violated promise leaves duplicate ids."""
        id_array, matrix = self._ids_and_vectors(ids, vectors)
        if id_array.size == 0:
            return
        if not assume_new:
            if np.unique(id_array).size != id_array.size:
                raise IndexInputError("duplicate ids in one add")
            present = self._backend.contains(id_array)
            if present.any():
                raise IndexInputError(f"ids already in index: {id_array[present][:10].tolist()}")
        self._backend.add(id_array, matrix)

    def remove(self, ids: object) -> int:
        """Remove ``ids`` (absent ones are ignored); returns how many were removed."""
        id_array = _as_ids(ids)
        present = np.unique(id_array[self._backend.contains(id_array)])
        if present.size == 0:
            return 0
        return self._backend.drop(present)

    def prepare(self) -> None:
        """Finish a bulk build: train and encode (fastscan); nothing for the other kinds."""
        if isinstance(self._backend, FastScanBackend):
            self._backend.prepare()

    def compacted(self) -> VectorIndex:
        """A new index of the same kind with only the live entries (this one is unchanged)."""
        return VectorIndex._of(self._dim, self._backend.compacted())

    def reset(self) -> None:
        spec = self._backend.spec
        self._backend = (
            FastScanBackend(self._dim, spec)
            if spec.kind == INDEX_FASTSCAN
            else IdMapBackend(self._dim, spec)
        )

    # ------------------------------------------------------------------ reads
    def search(
        self, queries: object, k: int, *, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product for each query row.

        Returns ``(scores float32 (m, kk), ids int64 (m, kk))`` with ``kk = min(k, ntotal)``,
        best first. A flat index fills every row; HNSW and fastscan may leave trailing ``-1``
        ids (score ``-inf``) when they find fewer than ``kk`` live entries: callers drop ids < 0.
        An empty index gives ``(m, 0)`` arrays. A 1-D query is one row. Removed entries are
        never returned; fastscan scores are exact inner products.

        ``threads``: OpenMP threads for this call only (set on the calling thread and restored;
        OpenMP keeps the setting per thread). ``None`` keeps FAISS's default (all cores).
        """
        matrix = self._as_vectors(queries, name="queries")
        if int(k) < 1:
            raise IndexInputError(f"k must be >= 1, got {k}")
        kk = min(int(k), self.ntotal)
        m = matrix.shape[0]
        if kk == 0 or m == 0:
            return np.empty((m, 0), dtype=np.float32), np.empty((m, 0), dtype=np.int64)
        if threads is None:
            return self._backend.search(matrix, kk)
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(int(threads))
        try:
            return self._backend.search(matrix, kk)
        finally:
            faiss.omp_set_num_threads(previous)

    def ids(self) -> np.ndarray:
        """Every id in the index (a copy, in storage order)."""
        return self._backend.ids()

    def reconstruct(self, ids: object) -> np.ndarray:
        """Stored vectors for ``ids`` as float32 (n, dim); IndexInputError when one is absent."""
        id_array = _as_ids(ids)
        if id_array.size == 0:
            return np.empty((0, self._dim), dtype=np.float32)
        missing = id_array[~self._backend.contains(id_array)]
        if missing.size:
            raise IndexInputError(f"ids not in index: {missing[:10].tolist()}")
        return self._backend.reconstruct(id_array)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of every live entry, aligned, in storage order (copies)."""
        return self._backend.vectors()

    # ------------------------------------------------------------------ persistence
    def snapshot_parts(self, meta: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """What :func:`write_parts` needs to write this index as of now: a small copy of its
        state (take it under the caller's lock), written out later without the lock."""
        full = {**self.spec.meta(), **meta, "dim": self._dim, "count": self.ntotal}
        backend = self._backend
        if isinstance(backend, FastScanBackend):
            extra, parts = backend.snapshot_parts()
            full.update(extra)
            return full, [snapshot_file.Section.of(name, *p) for name, p in parts.items()]
        return full, [snapshot_file.Section.of("faiss", backend.serialize())]

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        write_parts(Path(path), *self.snapshot_parts(meta))

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, dict[str, Any]]:
        """Open a snapshot written by :meth:`save`. Raises ``FileNotFoundError`` when absent and
        :class:`IndexCorruptError` on any truncation, bit flip or inconsistency found — for a
        fastscan snapshot, the float rows are checked on a sample of blocks now and fully by
        ``index.source.verify_rest()`` (see ``index.snapshot_file``)."""
        snapshot = snapshot_file.read(Path(path))
        meta = {k: v for k, v in snapshot.meta.items() if k != "sections"}
        try:
            index = cls._open(snapshot, meta)
        except IndexCorruptError as error:
            raise IndexCorruptError(f"{path}: {error}") from None
        # Keep the mapping's handle only while part of it is still unverified.
        index.source = snapshot if snapshot.pending else None
        return index, meta

    @classmethod
    def _open(cls, snapshot: snapshot_file.Snapshot, meta: dict[str, Any]) -> VectorIndex:
        dim = meta["dim"]
        kind = meta.get("index_type", INDEX_FLAT)
        if kind == INDEX_FASTSCAN:
            dims_per_code = meta.get("fastscan_dims_per_code")
            if not isinstance(dims_per_code, int) or dims_per_code < 1:
                raise IndexCorruptError("fastscan snapshot lacks fastscan_dims_per_code")
            spec = IndexSpec(kind=INDEX_FASTSCAN, fastscan_dims_per_code=dims_per_code)
            backend: Backend = FastScanBackend.open(dim, spec, meta, snapshot)
        else:
            snapshot.check("faiss")
            backend = IdMapBackend.deserialize(dim, snapshot.raw("faiss"))
            if backend.spec.kind != kind:
                raise IndexCorruptError(f"meta says {kind!r}, the index is {backend.spec.kind!r}")
        index = cls._of(dim, backend)
        if "count" in meta and index.ntotal != meta["count"]:
            raise IndexCorruptError(
                f"index holds {index.ntotal} vectors, meta says {meta['count']}"
            )
        return index


def write_parts(path: Path, meta: dict[str, Any], sections: list[Any]) -> None:
    """Write a snapshot from :meth:`VectorIndex.snapshot_parts` (atomically)."""
    snapshot_file.write(path, meta, sections)
