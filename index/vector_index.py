"""An inner-product index over int64 ids (exact or approximate), and its crash-safe snapshot file.

(Longer than the ~400 lines a module here usually gets, on purpose: the index and its snapshot
file are one unit — the snapshot is the index's own serialisation, validated against it — and
the flat and HNSW variants share the id map, tombstones and input checks.)

``VectorIndex`` wraps ``faiss.IndexIDMap2(faiss.IndexFlatIP(dim))`` by default: exact search
(profiles are unit vectors, so inner product = cosine similarity), arbitrary int64 ids, and
``reconstruct`` by id (the "2" keeps a reverse map). It knows vectors and ids only — never
speakers.

``IndexSpec(kind="hnsw")`` swaps the flat index for ``faiss.IndexHNSWFlat`` (inner product):
approximate, sub-linear search for large galleries. An HNSW graph cannot remove nodes, so
removal is a *tombstone*: the entry's slot in the id map is overwritten with ``TOMBSTONE`` (a
negative id), and every search passes an ``IDSelectorRange(0, ...)`` that excludes negative ids,
so a deleted or replaced vector is never returned (exactly, not approximately). When tombstones
exceed ``compact_fraction`` of the graph, the index is rebuilt from its live vectors. Tombstones
are part of the serialised id map, so snapshots keep them.

Snapshot file layout (one file per index, so header, metadata and vectors cannot disagree)::

    magic        8 bytes   b"VSIDXSNP"
    version      u32 LE    FORMAT_VERSION
    meta_len     u32 LE
    meta         meta_len bytes of UTF-8 JSON (caller's dict + "dim" and "count")
    blob_len     u64 LE
    blob         blob_len bytes of faiss.serialize_index
    checksum     32 bytes  sha256 of every preceding byte

It is written to a uniquely named temp file in the same directory, fsynced, renamed over the
target (atomic on POSIX), and the directory is fsynced so the rename itself is durable. Readers
therefore see the old file or the new one, never a mix; anything else raises IndexCorruptError.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import secrets
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.errors import IndexCorruptError, IndexInputError

MAGIC = b"VSIDXSNP"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sII")  # magic, version, meta_len
_BLOB_LEN = struct.Struct("<Q")
_CHECKSUM_LEN = 32
_MAX_META = 1 << 20

INDEX_FLAT = "flat"
INDEX_HNSW = "hnsw"
INDEX_TYPES = (INDEX_FLAT, INDEX_HNSW)
#: Id-map value of a removed HNSW entry (FAISS uses -1 for "no result", so -2).
TOMBSTONE = -2
_ALIVE_MAX = 1 << 62  # IDSelectorRange upper bound: every valid (>= 0) id is below it


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build. ``flat``: exact. ``hnsw``: approximate graph search with
    ``hnsw_m`` links per node, ``ef_construction`` (build quality) and ``ef_search`` (search
    breadth; at least ``k`` is used). Only ``kind`` and ``hnsw_m``/``ef_construction`` shape the
    stored index; ``ef_search`` and ``compact_fraction`` apply at run time."""

    kind: str = INDEX_FLAT
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    compact_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in INDEX_TYPES:
            raise IndexInputError(f"index kind must be one of {INDEX_TYPES}, got {self.kind!r}")
        if min(self.hnsw_m, self.ef_construction, self.ef_search) < 1:
            raise IndexInputError("HNSW parameters must be positive")
        if not 0.0 < self.compact_fraction <= 1.0:
            raise IndexInputError("compact_fraction must be in (0, 1]")

    def meta(self) -> dict[str, Any]:
        """What a snapshot records about the index it holds."""
        if self.kind == INDEX_FLAT:
            return {"index_type": INDEX_FLAT}
        return {
            "index_type": INDEX_HNSW,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construction": self.ef_construction,
        }

    def new_faiss_index(self, dim: int) -> Any:
        if self.kind == INDEX_FLAT:
            return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        hnsw = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self.ef_construction
        hnsw.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap2(hnsw)


def spec_of(faiss_index: Any) -> IndexSpec:
    """The spec a deserialised ``IndexIDMap2`` was built with (run-time fields: defaults)."""
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


# Below this many ids a membership probe through IndexIDMap2's reverse map (O(1) each) beats a
# vectorised scan of the whole id array (O(ntotal)).
_PROBE_LIMIT = 64


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
    """Inner-product search over ``dim``-dimensional float32 vectors keyed by int64 ids: exact
    (``spec.kind == "flat"``, the default) or HNSW (see the module docstring).

    Not thread-safe for concurrent modification: callers serialise writes against searches
    (``service.search.gallery.Gallery`` holds a lock).
    """

    def __init__(
        self, dim: int, *, spec: IndexSpec | None = None, _faiss_index: Any = None
    ) -> None:
        if int(dim) <= 0:
            raise IndexInputError(f"dim must be positive, got {dim}")
        self._dim = int(dim)
        if _faiss_index is None:
            self._spec = spec or IndexSpec()
            _faiss_index = self._spec.new_faiss_index(self._dim)
        else:
            built = spec_of(_faiss_index)
            # Run-time options come from the caller; the stored structure from the index.
            self._spec = replace(
                built,
                ef_search=spec.ef_search if spec else built.ef_search,
                compact_fraction=spec.compact_fraction if spec else built.compact_fraction,
            )
        self._index = _faiss_index
        self._hnsw = self._spec.kind == INDEX_HNSW
        self._tombstones = int(np.count_nonzero(self._id_view() < 0)) if self._hnsw else 0
        self._alive = faiss.IDSelectorRange(0, _ALIVE_MAX)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def spec(self) -> IndexSpec:
        return self._spec

    @property
    def ntotal(self) -> int:
        """Live vectors (HNSW tombstones excluded)."""
        return int(self._index.ntotal) - self._tombstones

    @property
    def tombstones(self) -> int:
        return self._tombstones

    def set_runtime_options(self, spec: IndexSpec) -> None:
        """Apply ``ef_search`` / ``compact_fraction`` of ``spec`` (structure is unchanged)."""
        self._spec = replace(
            self._spec, ef_search=spec.ef_search, compact_fraction=spec.compact_fraction
        )

    def __len__(self) -> int:
        return self.ntotal

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

    def _id_view(self) -> np.ndarray:
        """Zero-copy view of the id array (position -> id). Valid only until the next change."""
        n = int(self._index.ntotal)  # physical slots, tombstones (negative) included
        if n == 0:
            return np.empty(0, dtype=np.int64)
        return faiss.rev_swig_ptr(self._index.id_map.data(), n)

    def contains(self, ids: object) -> np.ndarray:
        """Boolean mask: which of ``ids`` are in the index."""
        array = _as_ids(ids)
        if self.ntotal == 0 or array.size == 0:
            return np.zeros(array.shape, dtype=bool)
        # HNSW: the reverse map still knows tombstoned ids, so only the id map is authoritative.
        if array.size <= _PROBE_LIMIT and not self._hnsw:
            mask = np.zeros(array.shape, dtype=bool)
            buffer = np.empty(self._dim, dtype=np.float32)
            for i, key in enumerate(array.tolist()):
                try:
                    self._index.reconstruct(key, buffer)
                    mask[i] = True
                except RuntimeError:  # "key not found" from the reverse map
                    pass
            return mask
        return np.isin(array, self._id_view())

    # ------------------------------------------------------------------ changes
    def _ids_and_vectors(self, ids: object, vectors: object) -> tuple[np.ndarray, np.ndarray]:
        """Validated int64 ids and float32 (n, dim) vectors, one vector per id."""
        id_array = _as_ids(ids)
        matrix = self._as_vectors(vectors)
        if matrix.shape[0] != id_array.size:
            raise IndexInputError(f"{id_array.size} ids but {matrix.shape[0]} vectors")
        return id_array, matrix

    def upsert(self, ids: object, vectors: object) -> None:
        """Insert or replace. Existing ids are removed first, in one batch (removal is O(ntotal)
        per call on a flat index, so it is skipped entirely when every id is new)."""
        id_array, matrix = self._ids_and_vectors(ids, vectors)
        if id_array.size == 0:
            return
        if np.unique(id_array).size != id_array.size:
            raise IndexInputError("duplicate ids in one upsert")
        present = self.contains(id_array)
        if present.any():
            self._drop(id_array[present])
        self._index.add_with_ids(matrix, id_array)
        self._maybe_compact()

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
            present = self.contains(id_array)
            if present.any():
                raise IndexInputError(f"ids already in index: {id_array[present][:10].tolist()}")
        self._index.add_with_ids(matrix, id_array)

    def remove(self, ids: object) -> int:
        """Remove ``ids`` (absent ones are ignored); returns how many were removed."""
        id_array = _as_ids(ids)
        present = id_array[self.contains(id_array)]
        if present.size == 0:
            return 0
        removed = self._drop(np.unique(present))
        self._maybe_compact()
        return removed

    def _drop(self, ids: np.ndarray) -> int:
        """Remove ids known to be present: physically (flat) or by tombstone (HNSW)."""
        if not self._hnsw:
            return int(self._index.remove_ids(ids))
        view = self._id_view()
        positions = np.flatnonzero(np.isin(view, ids))
        view[positions] = TOMBSTONE
        self._tombstones += int(positions.size)
        return int(np.unique(ids).size)

    def _maybe_compact(self) -> None:
        physical = int(self._index.ntotal)
        if self._tombstones and self._tombstones > self._spec.compact_fraction * physical:
            self.compact()

    def compact(self) -> None:
        """Rebuild an HNSW index from its live vectors (drops every tombstone)."""
        if not self._hnsw or self._tombstones == 0:
            return
        ids, vectors = self.vectors()
        fresh = self._spec.new_faiss_index(self._dim)
        if ids.size:
            fresh.add_with_ids(vectors, ids)
        self._index = fresh
        self._tombstones = 0

    def reset(self) -> None:
        self._index = self._spec.new_faiss_index(self._dim)
        self._tombstones = 0

    # ------------------------------------------------------------------ reads
    def search(
        self, queries: object, k: int, *, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product for each query row.

        Returns ``(scores float32 (m, kk), ids int64 (m, kk))`` with ``kk = min(k, ntotal)``,
        best first. An exact flat index fills every row up to ``ntotal``, so there are no -1
        padding columns; an HNSW index may leave trailing ``-1`` ids (score ``-inf``) where its
        graph walk found fewer than ``kk`` live entries: callers drop ids < 0. An empty index
        gives ``(m, 0)`` arrays. A 1-D query is one row. Tombstoned (removed) HNSW entries are
        never returned.

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
        params = None
        if self._hnsw:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self._spec.ef_search, kk)
            if self._tombstones:
                params.sel = self._alive
        if threads is None:
            return self._index.search(matrix, kk, params=params)
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(int(threads))
        try:
            return self._index.search(matrix, kk, params=params)
        finally:
            faiss.omp_set_num_threads(previous)

    def ids(self) -> np.ndarray:
        """Every id in the index (a copy, in storage order)."""
        view = self._id_view()
        return view[view >= 0] if self._tombstones else view.copy()

    def reconstruct(self, ids: object) -> np.ndarray:
        """Stored vectors for ``ids`` as float32 (n, dim); KeyError-like IndexInputError when an
        id is absent."""
        id_array = _as_ids(ids)
        if id_array.size == 0:
            return np.empty((0, self._dim), dtype=np.float32)
        missing = id_array[~self.contains(id_array)]
        if missing.size:
            raise IndexInputError(f"ids not in index: {missing[:10].tolist()}")
        return self._index.reconstruct_batch(id_array)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of every entry, aligned, in storage order (copies)."""
        n = int(self._index.ntotal)
        if self.ntotal == 0:
            return np.empty(0, dtype=np.int64), np.empty((0, self._dim), dtype=np.float32)
        flat = faiss.downcast_index(self._index.index)
        if self._hnsw:
            flat = faiss.downcast_index(flat.storage)
        data = faiss.rev_swig_ptr(flat.get_xb(), n * self._dim).reshape(n, self._dim)
        if self._tombstones:
            alive = self._id_view() >= 0
            return self._id_view()[alive], data[alive]
        return self.ids(), data.copy()

    # ------------------------------------------------------------------ persistence
    def serialize(self) -> np.ndarray:
        """The FAISS bytes of this index (a copy; cheap enough to take under a lock and write
        out later)."""
        return faiss.serialize_index(self._index)

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        full = {**self._spec.meta(), **meta}
        write_snapshot(Path(path), full, self.serialize(), dim=self._dim, count=self.ntotal)

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, dict[str, Any]]:
        """Read a snapshot written by :meth:`save`. Raises ``FileNotFoundError`` when absent and
        :class:`IndexCorruptError` on any truncation, bit flip or inconsistency."""
        return read_snapshot(Path(path))


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; not every platform lets you open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_snapshot(
    path: Path, meta: dict[str, Any], blob: np.ndarray, *, dim: int, count: int
) -> None:
    """Atomically write a snapshot file (see module docstring). Several processes may write
    the same path at once: temp names are unique and the last rename wins."""
    full_meta = {**meta, "dim": int(dim), "count": int(count)}
    meta_bytes = json.dumps(full_meta, sort_keys=True).encode()
    if len(meta_bytes) > _MAX_META:
        raise IndexInputError("snapshot metadata too large")
    payload = memoryview(np.ascontiguousarray(blob, dtype=np.uint8)).cast("B")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as fh:
            for part in (
                _HEAD.pack(MAGIC, FORMAT_VERSION, len(meta_bytes)),
                meta_bytes,
                _BLOB_LEN.pack(len(payload)),
                payload,
            ):
                digest.update(part)
                fh.write(part)
            fh.write(digest.digest())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def read_snapshot(path: Path) -> tuple[VectorIndex, dict[str, Any]]:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        minimum = _HEAD.size + _BLOB_LEN.size + _CHECKSUM_LEN
        if size < minimum:
            raise IndexCorruptError(f"{path}: truncated ({size} bytes)")
        # mmap: a large index is hashed and deserialised without a second in-memory copy.
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return _parse_snapshot(path, view, size)
            finally:
                view.release()


def _parse_snapshot(path: Path, view: memoryview, size: int) -> tuple[VectorIndex, dict[str, Any]]:
    magic, version, meta_len = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise IndexCorruptError(f"{path}: not a voicesearch index snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise IndexCorruptError(f"{path}: unsupported snapshot format version {version}")
    offset = _HEAD.size
    if meta_len > _MAX_META or offset + meta_len + _BLOB_LEN.size > size - _CHECKSUM_LEN:
        raise IndexCorruptError(f"{path}: truncated or invalid metadata length")
    meta_bytes = bytes(view[offset : offset + meta_len])
    offset += meta_len
    (blob_len,) = _BLOB_LEN.unpack_from(view, offset)
    offset += _BLOB_LEN.size
    if offset + blob_len + _CHECKSUM_LEN != size:
        raise IndexCorruptError(
            f"{path}: size {size} does not match its header (truncated or extended)"
        )
    body_end = offset + blob_len
    digest = hashlib.sha256(view[:body_end]).digest()
    if digest != bytes(view[body_end:size]):
        raise IndexCorruptError(f"{path}: checksum mismatch")
    try:
        meta = json.loads(meta_bytes)
    except ValueError as error:
        raise IndexCorruptError(f"{path}: unreadable metadata") from error
    if not isinstance(meta, dict) or not isinstance(meta.get("dim"), int):
        raise IndexCorruptError(f"{path}: metadata lacks 'dim'")
    blob = np.frombuffer(view, dtype=np.uint8, count=blob_len, offset=offset)
    failure: str | None = None
    try:
        faiss_index = faiss.deserialize_index(blob)
    except RuntimeError as error:
        # Keep only the text: the exception's traceback would pin `blob` (an export of the
        # mmap) and make closing the mmap fail with BufferError.
        failure = str(error)
    del blob
    if failure is not None:
        raise IndexCorruptError(f"{path}: FAISS could not read the index: {failure}")
    if not isinstance(faiss_index, faiss.IndexIDMap2):
        raise IndexCorruptError(f"{path}: unexpected index type {type(faiss_index).__name__}")
    if faiss_index.d != meta["dim"]:
        raise IndexCorruptError(f"{path}: index dimension {faiss_index.d} != meta {meta['dim']}")
    index = VectorIndex(meta["dim"], _faiss_index=faiss_index)
    if "count" in meta and index.ntotal != meta["count"]:
        raise IndexCorruptError(
            f"{path}: index holds {index.ntotal} vectors, meta says {meta['count']}"
        )
    if meta.get("index_type", INDEX_FLAT) != index.spec.kind:
        raise IndexCorruptError(
            f"{path}: meta says {meta.get('index_type')!r}, the index is {index.spec.kind!r}"
        )
    return index, meta
