"""What the search layer needs of a vector store, whichever engine holds the vectors.

Two implementations, chosen by ``VOICESEARCH_VECTOR_STORE``
(``service.bootstrap.build_vector_store``):

* ``faiss`` (default): :class:`service.search.gallery.Gallery`, an in-memory FAISS index per
  space in every process, snapshots on disk, each process replaying the change log.
* ``milvus``: :class:`service.search.milvus_gallery.MilvusGallery`, one Milvus collection per
  space shared by every node, the change log replayed into it once (by whichever node sees it
  behind first) under the database's writers' lock.

In both the database is the source of truth and ``index_changes`` drives the vectors, so a
space is just a name: a new space (e.g. a derived narrowband one) is another index / collection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from storage.change_log import ChangeLog
from storage.records import SpeakerBrief

if TYPE_CHECKING:
    from service.search.gallery_admin import RebuildReport, VerifyReport


@dataclass(frozen=True)
class Hit:
    speaker_id: int
    score: float


def hits_of(scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
    """FAISS-shaped results (``-1`` ids pad a short row) as lists of hits, best first."""
    return [
        [Hit(int(i), float(s)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
        for row_scores, row_ids in zip(scores, ids, strict=True)
    ]


class VectorStore(Protocol):
    """A searchable copy of every space's current profiles, kept in step with the change log."""

    #: The change log (and the database behind it) the vectors are replayed from.
    store: ChangeLog
    #: Vector width per space; a space absent here is unknown (``UnknownSpace``).
    dims: dict[str, int]

    def open(self) -> Mapping[str, str]:
        """Load, catch up or build every space; returns ``{space: how it was opened}``."""
        ...

    def sync(self) -> None:
        """Apply every committed change not yet reflected (one cheap query when none)."""
        ...

    def publish(self) -> None:
        """Called by a writer after its commit, before it answers: make the change searchable
        from every process that shares this store (FAISS: nothing, each process catches up)."""
        ...

    def search(self, space: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` per query row, best first, every committed write visible."""
        ...

    def search_briefs(
        self, space: str, vector: np.ndarray, k: int, describe: int
    ) -> tuple[list[Hit], dict[int, SpeakerBrief]]:
        """One query's hits and the speakers of the first ``describe``, checked current with
        the change cursor read in the same database round trip as the speakers."""
        ...

    def vectors(self, space: str, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ``ids`` (float32 (n, dim)); NaN rows for ids not indexed."""
        ...

    def version(self, space: str) -> tuple[int, int]:
        """Something that moves on every change of the space (AS-norm cache keys)."""
        ...

    def size(self, space: str) -> int:
        """Searchable vectors as of the last sync; no lock, no database."""
        ...

    def index_kind(self, space: str) -> str: ...

    def snapshot_age_s(self, space: str) -> float | None:
        """Age of the space's snapshot file (``None``: none, or a store without snapshots)."""
        ...

    def maybe_snapshot(self) -> None: ...

    def snapshot(self, space: str | None = None) -> None: ...

    def rebuild(
        self, space: str, progress: Callable[[int, int], None] | None = None
    ) -> RebuildReport: ...

    def verify(self) -> dict[str, VerifyReport]: ...

    def close(self, timeout: float | None = 30.0) -> None: ...
