"""Float vectors by position, and where each id lives: the storage under the fastscan index.

:class:`RowStore` keeps float32 rows and one int64 id per row, addressed by position. Rows are
append-only and never move or change once written; removing an entry only overwrites its id
with ``TOMBSTONE``. That is what lets a snapshot writer read rows without holding any lock, and
lets the first block of rows be a read-only memory map of the snapshot file it was loaded from
(zero-copy start-up): new rows go to separate, owned blocks.

:class:`IdPositions` maps ids to positions: a dense int64 array indexed by id (8 bytes per id
up to the largest one: speaker ids are dense primary keys), or a dict when ids are too sparse
for that to be reasonable.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: Id of a removed row (FAISS uses -1 for "no result", so -2).
TOMBSTONE = -2
#: Rows per owned block appended after the base block.
GROWTH_ROWS = 65_536


class RowStore:
    def __init__(
        self, dim: int, base: np.ndarray | None = None, base_ids: np.ndarray | None = None
    ) -> None:
        """``base`` (n, dim) float32 — may be a read-only memory map, never written — and its
        ``base_ids`` (copied: removals write to ids)."""
        self.dim = int(dim)
        self._blocks: list[np.ndarray] = []
        self._starts: list[int] = []
        self._count = 0
        self._ids = np.empty(0, dtype=np.int64)
        if base is not None and base.shape[0]:
            assert base_ids is not None and base_ids.shape[0] == base.shape[0]
            self._blocks.append(base)
            self._starts.append(0)
            self._count = int(base.shape[0])
            self._ids = np.array(base_ids, dtype=np.int64, copy=True)
        self._tail_used = self._count  # rows used in the last block
        self._tail_owned = False  # whether the last block is an owned growth block

    def __len__(self) -> int:
        """Physical rows, tombstoned ones included."""
        return self._count

    @property
    def ids(self) -> np.ndarray:
        """Position -> id (``TOMBSTONE`` for removed rows); a view, valid until the next change."""
        return self._ids[: self._count]

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Store rows at the end; returns their positions."""
        n = int(vectors.shape[0])
        positions = np.arange(self._count, self._count + n, dtype=np.int64)
        if self._ids.shape[0] < self._count + n:
            grown = np.empty(max(self._count + n, int(self._ids.shape[0] * 1.25) + 1024), np.int64)
            grown[: self._count] = self._ids[: self._count]
            self._ids = grown
        self._ids[self._count : self._count + n] = ids
        done = 0
        while done < n:
            if not self._tail_owned or self._tail_used == self._blocks[-1].shape[0]:
                # The base block (a map of the snapshot) never takes rows: new owned block.
                self._blocks.append(np.empty((GROWTH_ROWS, self.dim), dtype=np.float32))
                self._starts.append(self._count + done)
                self._tail_used = 0
                self._tail_owned = True
            block = self._blocks[-1]
            take = min(block.shape[0] - self._tail_used, n - done)
            block[self._tail_used : self._tail_used + take] = vectors[done : done + take]
            self._tail_used += take
            done += take
        self._count += n
        return positions

    def remove(self, positions: np.ndarray) -> None:
        self._ids[positions] = TOMBSTONE

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions`` as a new (len, dim) float32 array."""
        out = np.empty((positions.shape[0], self.dim), dtype=np.float32)
        if not positions.shape[0]:
            return out
        if len(self._blocks) == 1:
            out[:] = self._blocks[0][positions]
            return out
        which = np.searchsorted(np.asarray(self._starts), positions, side="right") - 1
        for b in np.unique(which):
            mask = which == b
            out[mask] = self._blocks[b][positions[mask] - self._starts[b]]
        return out

    def blocks(self, count: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start position, rows)`` covering positions ``[0, count)`` (default: all), in
        order. Views: rows below ``count`` never change, so a caller may read them unlocked."""
        end = self._count if count is None else int(count)
        for start, block in zip(list(self._starts), list(self._blocks), strict=True):
            if start >= end:
                return
            yield start, block[: min(block.shape[0], end - start)]


class IdPositions:
    """id -> position (or -1). Dense array while ids stay below ``16 * entries + 2**20``."""

    def __init__(self) -> None:
        self._dense: np.ndarray | None = np.full(0, -1, dtype=np.int64)
        self._sparse: dict[int, int] = {}
        self._entries = 0

    def _fits_dense(self, top: int) -> bool:
        return top < 16 * (self._entries + 1) + (1 << 20)

    def _to_sparse(self) -> None:
        assert self._dense is not None
        present = np.flatnonzero(self._dense >= 0)
        self._sparse = dict(zip(present.tolist(), self._dense[present].tolist(), strict=True))
        self._dense = None

    def set(self, ids: np.ndarray, positions: np.ndarray) -> None:
        if not ids.size:
            return
        top = int(ids.max())
        if self._dense is not None and not self._fits_dense(top + ids.size):
            self._to_sparse()
        if self._dense is not None:
            if top >= self._dense.shape[0]:
                grown = np.full(max(top + 1, int(self._dense.shape[0] * 1.25)), -1, np.int64)
                grown[: self._dense.shape[0]] = self._dense
                self._dense = grown
            self._entries += int(np.count_nonzero(self._dense[ids] < 0))
            self._dense[ids] = positions
        else:
            for key, pos in zip(ids.tolist(), positions.tolist(), strict=True):
                if key not in self._sparse:
                    self._entries += 1
                self._sparse[key] = pos

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` (-1 where absent)."""
        if self._dense is not None:
            out = np.full(ids.shape, -1, dtype=np.int64)
            inside = ids < self._dense.shape[0]
            out[inside] = self._dense[ids[inside]]
            return out
        return np.fromiter(
            (self._sparse.get(key, -1) for key in ids.tolist()), dtype=np.int64, count=ids.size
        )

    def drop(self, ids: np.ndarray) -> None:
        """Forget ``ids`` (all present)."""
        if self._dense is not None:
            self._dense[ids] = -1
        else:
            for key in ids.tolist():
                self._sparse.pop(key, None)
        self._entries -= int(ids.size)
