"""Which index a space uses: :class:`IndexSpec` (kind + parameters) and the ``auto`` choice.

Kinds (measured in bench/RESULTS.md on vectors drawn around real ECAPA embeddings):

* ``flat``: exact inner product over every vector (FAISS ``IndexFlatIP``). Cost grows with the
  gallery: ~0.2 ms at 10k, ~5 ms at 100k, ~33 ms at 1M on one core (768 MB streamed per query).
* ``fastscan``: every vector as a 4-bit product-quantisation code (FAISS ``IndexPQFastScan``,
  ``dim / fastscan_dims_per_code`` sub-quantisers: 48 bytes per 192-dim vector), scanned with
  SIMD lookup tables; the best ``rerank`` candidates are then re-scored EXACTLY from the float
  vectors kept beside the codes. Scores returned are exact inner products; only the candidate
  list is approximate. Speaker embeddings have no cluster structure to exploit (impostor
  cosines ~0.1 +- 0.09, 192 dimensions), so inverted lists or graphs must visit most of the
  gallery to find the top 10; a compressed scan of everything is the cheaper way.
* ``hnsw``: a graph (FAISS ``IndexHNSWFlat``); fast, but on these vectors it misses the recall
  target at 1M (see bench/RESULTS.md). Kept for compatibility.
* ``auto``: ``flat`` below ``auto_threshold`` vectors, ``fastscan`` from there on; decided each
  time an index is built (start-up rebuild, compaction, ``voicesearch index rebuild``). A built
  index is kept while the gallery stays within a factor 2 of the threshold (hysteresis), so a
  gallery hovering around it is not rebuilt back and forth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from index.errors import IndexInputError

INDEX_FLAT = "flat"
INDEX_HNSW = "hnsw"
INDEX_FASTSCAN = "fastscan"
INDEX_AUTO = "auto"
#: Kinds a built index can have.
INDEX_KINDS = (INDEX_FLAT, INDEX_HNSW, INDEX_FASTSCAN)
#: Kinds a setting can name.
INDEX_TYPES = (*INDEX_KINDS, INDEX_AUTO)


@dataclass(frozen=True)
class IndexSpec:
    """Which index to build and how to search it.

    Stored structure (recorded in snapshots, a change means a rebuild): ``kind``; ``hnsw_m`` and
    ``ef_construction`` for HNSW; ``fastscan_dims_per_code`` for fastscan. Run-time only:
    ``ef_search``, ``rerank``, ``compact_fraction``, ``auto_threshold``, ``train_size``.
    """

    kind: str = INDEX_FLAT
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    #: Tombstones (HNSW, fastscan) above this fraction of the stored entries ask for a rebuild.
    compact_fraction: float = 0.2
    #: fastscan: dimensions per 4-bit code (2: 96 codes, 48 bytes for a 192-dim vector).
    fastscan_dims_per_code: int = 2
    #: fastscan: candidates re-scored exactly per query (at least 4 x k are).
    rerank: int = 1000
    #: fastscan: vectors the quantiser is trained on (a random sample of the gallery).
    train_size: int = 20_000
    #: auto: galleries of at least this many vectors use fastscan.
    auto_threshold: int = 50_000

    def __post_init__(self) -> None:
        if self.kind not in INDEX_TYPES:
            raise IndexInputError(f"index kind must be one of {INDEX_TYPES}, got {self.kind!r}")
        if min(self.hnsw_m, self.ef_construction, self.ef_search) < 1:
            raise IndexInputError("HNSW parameters must be positive")
        if not 0.0 < self.compact_fraction <= 1.0:
            raise IndexInputError("compact_fraction must be in (0, 1]")
        if min(self.fastscan_dims_per_code, self.rerank, self.train_size) < 1:
            raise IndexInputError("fastscan parameters must be positive")
        if self.auto_threshold < 1:
            raise IndexInputError("auto_threshold must be positive")

    def resolve(self, count: int) -> IndexSpec:
        """The concrete spec for a gallery of ``count`` vectors (``auto`` decides here)."""
        if self.kind != INDEX_AUTO:
            return self
        kind = INDEX_FASTSCAN if count >= self.auto_threshold else INDEX_FLAT
        return replace(self, kind=kind)

    def meta(self) -> dict[str, Any]:
        """What a snapshot records about the structure of the index it holds."""
        if self.kind == INDEX_AUTO:
            raise IndexInputError("an 'auto' spec has no structure: resolve(count) it first")
        if self.kind == INDEX_HNSW:
            return {
                "index_type": INDEX_HNSW,
                "hnsw_m": self.hnsw_m,
                "hnsw_ef_construction": self.ef_construction,
            }
        if self.kind == INDEX_FASTSCAN:
            return {
                "index_type": INDEX_FASTSCAN,
                "fastscan_dims_per_code": self.fastscan_dims_per_code,
            }
        return {"index_type": INDEX_FLAT}

    def accepts(self, built: dict[str, Any], count: int) -> bool:
        """Whether an index built as ``built`` (a :meth:`meta` dict) may serve a gallery of
        ``count`` vectors under this (configured) spec, or must be rebuilt."""
        if self.kind != INDEX_AUTO:
            return _structure(built) == _structure(self.meta())
        kind = built.get("index_type", INDEX_FLAT)
        for candidate in (INDEX_FLAT, INDEX_FASTSCAN):
            if kind == candidate:
                wanted = replace(self, kind=candidate).meta()
                in_range = (
                    count < 2 * self.auto_threshold
                    if candidate == INDEX_FLAT
                    else count >= self.auto_threshold // 2
                )
                return in_range and _structure(built) == _structure(wanted)
        return False

    def with_runtime(self, other: IndexSpec) -> IndexSpec:
        """This (built) structure with ``other``'s run-time options."""
        return replace(
            self,
            ef_search=other.ef_search,
            rerank=other.rerank,
            compact_fraction=other.compact_fraction,
            train_size=other.train_size,
            auto_threshold=other.auto_threshold,
        )


def _structure(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("index_type", "hnsw_m", "hnsw_ef_construction", "fastscan_dims_per_code")
    out = {key: meta.get(key) for key in keys}
    out["index_type"] = out["index_type"] or INDEX_FLAT
    return out
