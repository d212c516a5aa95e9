"""Index snapshot files and the per-space file locks that guard them.

A snapshot (``<snapshot_dir>/<space>.faiss``, format in ``index.vector_index``) only makes
start-up fast: it records the change-log ``seq`` it reflects, the rebuild generation, the model
identity and the index type, and is trusted only when all of them agree with what runs
(:func:`meta_problem`).

The per-space file lock (``<snapshot_dir>/.<space>.lock``) is cross-process *and* cross-thread
(one fresh lock object per use); :meth:`SnapshotFiles.lock` yields False when it could not be
had in time, and the caller decides whether to go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from index.vector_index import IndexSpec, VectorIndex, write_snapshot
from service.search.gallery_sync import SpaceState
from storage.records import ChangeCursor


def snapshot_meta(space: str, state: SpaceState, model_identity: str) -> dict[str, Any]:
    """The JSON meta block a snapshot of ``state`` carries."""
    return {
        **state.index.spec.meta(),
        "space": space,
        "seq": state.seq,
        "generation": state.generation,
        "model_identity": model_identity,
    }


def meta_problem(
    space: str,
    meta: dict[str, Any],
    cursor: ChangeCursor,
    *,
    dim: int,
    model_identity: str,
    index_spec: IndexSpec,
) -> str | None:
    """Why a snapshot with ``meta`` cannot be used for ``space`` now, or None if it can."""
    if meta.get("space") != space:
        return f"snapshot is for space {meta.get('space')!r}"
    if meta.get("dim") != dim:
        return f"snapshot dimension {meta.get('dim')} != model dimension {dim}"
    wanted = index_spec.meta()
    stored = {key: meta.get(key, "flat" if key == "index_type" else None) for key in wanted}
    if stored != wanted:
        return f"index type changed (snapshot {stored}, configured {wanted})"
    if meta.get("model_identity") != model_identity:
        return f"model changed (snapshot {meta.get('model_identity')!r}, loaded {model_identity!r})"
    if meta.get("generation") != cursor.generation(space):
        return (
            f"index generation {meta.get('generation')} != database generation "
            f"{cursor.generation(space)} (an index rebuild happened)"
        )
    seq = meta.get("seq")
    if not isinstance(seq, int) or seq < 0:
        return "snapshot has no valid seq"
    if seq > cursor.seq:
        return f"snapshot seq {seq} is ahead of the database ({cursor.seq}): database restored?"
    return None


class SnapshotFiles:
    """The snapshot directory: one file and one lock per space."""

    def __init__(self, snapshot_dir: Path) -> None:
        self.snapshot_dir = Path(snapshot_dir)

    def path(self, space: str) -> Path:
        return self.snapshot_dir / f"{space}.faiss"

    @contextlib.contextmanager
    def lock(self, space: str, timeout: float) -> Iterator[bool]:
        """Cross-process (and cross-thread: one fresh lock object per use) lock of one space.
        Yields False when it could not be had in time; callers decide whether to go on."""
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.snapshot_dir / f".{space}.lock"), thread_local=False)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def load(self, space: str) -> tuple[VectorIndex, dict[str, Any]]:
        """The snapshot's index and meta; raises FileNotFoundError, IndexCorruptError, OSError."""
        return VectorIndex.load(self.path(space))

    def save(self, space: str, state: SpaceState, model_identity: str) -> None:
        """Write ``state`` as the space's snapshot now (atomically); it has no unsaved changes."""
        state.index.save(self.path(space), snapshot_meta(space, state, model_identity))
        state.unsaved = 0

    def write(self, space: str, meta: dict[str, Any], blob: bytes, *, dim: int, count: int) -> None:
        """Write an already serialised index (copied under the gallery lock) as the snapshot."""
        write_snapshot(self.path(space), meta, blob, dim=dim, count=count)
