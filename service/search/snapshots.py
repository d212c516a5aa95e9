"""Index snapshot files, the per-space file locks that guard them, and when a snapshot is usable.

A snapshot (``<snapshot_dir>/<space>.faiss``, format in ``index.snapshot_file``) only makes
start-up fast: it records the change-log ``seq`` it reflects, the rebuild generation, the model
identity, the index type, the database it was made from (``database``: the UUID of migration
0005) and a fingerprint of the log at its seq (``log_row``: seq and time of the space's newest
change at or below it). It is trusted only when all of them agree with what runs
(:func:`meta_problem`). The fingerprint is what catches a restored older database that was then
written past the snapshot's seq: same UUID (it is a copy), same numbers, other rows.

The per-space file lock (``<snapshot_dir>/.<space>.lock``) is cross-process *and* cross-thread
(one fresh lock object per use); :meth:`SnapshotFiles.lock` yields False when it could not be
had in time, and the caller decides whether to go on. Temp files of writers that died
(``.<space>.faiss.<pid>.<token>.tmp``) are removed by :meth:`SnapshotFiles.remove_stale_temps`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from index import snapshot_file
from index.errors import IndexCorruptError
from index.spec import IndexSpec
from index.vector_index import VectorIndex, write_parts
from service.search.gallery_sync import SpaceState
from storage.records import ChangeCursor

logger = logging.getLogger(__name__)

#: A temp file whose writer is gone is removed once it is this old (a live writer keeps
#: writing, so its file's mtime stays fresh)...
STALE_TEMP_S = 60.0
#: ... and any temp file this old is removed, whoever wrote it (a pid may be reused, or belong
#: to another machine sharing the directory).
ABANDONED_TEMP_S = 3600.0


def snapshot_meta(
    space: str,
    state: SpaceState,
    model_identity: str,
    *,
    database: str | None,
    log_row: list[Any] | None,
) -> dict[str, Any]:
    """The JSON meta block a snapshot of ``state`` carries."""
    return {
        "space": space,
        "seq": state.seq,
        "generation": state.generation,
        "model_identity": model_identity,
        "database": database,
        "log_row": log_row,
    }


def meta_problem(
    space: str,
    meta: dict[str, Any],
    cursor: ChangeCursor,
    *,
    dim: int,
    model_identity: str,
    index_spec: IndexSpec,
    database: str | None,
    log_row: Callable[[int], list[Any] | None],
) -> str | None:
    """Why a snapshot with ``meta`` cannot be used for ``space`` now, or None if it can.
    ``log_row(seq)`` looks the fingerprint up in the database (only called when everything
    else agrees)."""
    if meta.get("space") != space:
        return f"snapshot is for space {meta.get('space')!r}"
    if meta.get("dim") != dim:
        return f"snapshot dimension {meta.get('dim')} != model dimension {dim}"
    count = meta.get("count")
    if not isinstance(count, int) or not index_spec.accepts(meta, count):
        return (
            f"index type changed (snapshot {meta.get('index_type')!r}, "
            f"configured {index_spec.kind!r})"
        )
    if meta.get("model_identity") != model_identity:
        return f"model changed (snapshot {meta.get('model_identity')!r}, loaded {model_identity!r})"
    if meta.get("database") != database:
        return (
            f"snapshot is of another database ({meta.get('database')!r}, this one is {database!r})"
        )
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
    if seq < cursor.horizon(space):
        return (
            f"snapshot seq {seq} is older than the compacted change log ({cursor.horizon(space)})"
        )
    if log_row(seq) != meta.get("log_row"):
        return (
            f"the change log at seq {seq} is not the one the snapshot saw: the database was "
            "restored from an older copy and written since"
        )
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

    def read_meta(self, space: str) -> dict[str, Any] | None:
        """The meta of the space's snapshot (header only, cheap), or None if there is no
        readable one."""
        try:
            return snapshot_file.read(self.path(space)).meta
        except (FileNotFoundError, IndexCorruptError, OSError):
            return None

    def write(self, space: str, meta: dict[str, Any], sections: list[Any]) -> None:
        """Write a snapshot prepared by ``VectorIndex.snapshot_parts`` (atomically)."""
        write_parts(self.path(space), meta, sections)

    def remove_stale_temps(self, space: str) -> list[Path]:
        """Remove temp files left by writers of ``space``'s snapshot that died: a temp file
        whose writer (the pid in its name) no longer runs on this host and that has not been
        written for ``STALE_TEMP_S``, or any one untouched for ``ABANDONED_TEMP_S``. Call it
        holding the space's file lock (snapshot writers of this service hold it while they
        write). Returns what was removed."""
        removed: list[Path] = []
        prefix = f".{self.path(space).name}."
        now = time.time()
        try:
            candidates = list(self.snapshot_dir.glob(f"{prefix}*{snapshot_file.TEMP_SUFFIX}"))
        except OSError:
            return removed
        for path in candidates:
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            pid_text = path.name[len(prefix) :].split(".", 1)[0]
            alive = pid_text.isdigit() and _pid_alive(int(pid_text))
            if age >= ABANDONED_TEMP_S or (not alive and age >= STALE_TEMP_S):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
        if removed:
            logger.info("index %s: removed %d stale temp snapshot file(s)", space, len(removed))
        return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
