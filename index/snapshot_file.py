"""The snapshot file: one file per index, written atomically, read without copying.

Layout (format version 2)::

    magic        8 bytes   b"VSIDXSNP"
    version      u32 LE    FORMAT_VERSION
    meta_len     u32 LE
    meta         meta_len bytes of UTF-8 JSON: the caller's dict, "dim", "count", and
                 "sections": [{"name", "offset", "length", "digests"}]
    meta_digest  32 bytes  sha256 of every preceding byte
    (zero padding to the first section's offset)
    sections     raw bytes, each starting on a 4096-byte boundary (so a float matrix can be
                 memory-mapped as it is), the last one ending exactly at the end of the file

Each section is checksummed per 4 MiB block (``digests``: the first 16 bytes of each block's
sha256, hex). :func:`read` always checks the header, the meta digest and the file size, and
fully checks every section it is asked to check now. A section opened *lazily* (a large float
matrix that will be memory-mapped) is checked only on a sample of blocks at open — its first,
its last and a few random ones — and :meth:`Snapshot.verify_rest` checks the remaining blocks
later (the gallery does it in a background thread right after start-up). That trades a window
of a second or two, during which a bit flip in an unchecked block of vectors would go unnoticed
(a wrong score for one speaker, never a crash: the rows are plain floats), for not hashing
768 MB (0.4 s) before a million-speaker gallery can answer.

Writing: a uniquely named temp file in the same directory (``.<name>.<pid>.<token>.tmp``),
fsynced, renamed over the target (atomic on POSIX), then the directory is fsynced. Readers see
the old file or the new one, never a mix. The file is never modified in place afterwards, which
is what makes memory-mapping it safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import random
import secrets
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import IndexCorruptError, IndexInputError

MAGIC = b"VSIDXSNP"
FORMAT_VERSION = 2
_HEAD = struct.Struct("<8sII")  # magic, version, meta_len
_DIGEST_LEN = 32
_MAX_META = 4 << 20
ALIGN = 4096
BLOCK = 4 << 20
#: Random blocks of a lazily opened section checked at open (besides its first and last).
SAMPLED_BLOCKS = 6
TEMP_SUFFIX = ".tmp"


def _block_digest(data: memoryview | bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _aligned(offset: int) -> int:
    return (offset + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Section:
    """One named byte range to write: an array (any dtype, written as raw bytes) or parts of
    one (``parts``: written one after another, e.g. the chunks of a row store)."""

    name: str
    parts: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, name: str, *parts: np.ndarray) -> Section:
        return cls(name, tuple(np.ascontiguousarray(p) for p in parts))

    @property
    def length(self) -> int:
        return sum(int(p.nbytes) for p in self.parts)

    def chunks(self) -> Iterator[memoryview]:
        for part in self.parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), BLOCK):
                yield view[start : start + BLOCK]


def _digests(section: Section) -> list[str]:
    """Per-BLOCK digests of a section whose parts may cut blocks anywhere."""
    out: list[str] = []
    digest = hashlib.sha256()
    filled = 0
    for chunk in section.chunks():
        view = chunk
        while len(view):
            take = min(BLOCK - filled, len(view))
            digest.update(view[:take])
            filled += take
            view = view[take:]
            if filled == BLOCK:
                out.append(digest.hexdigest()[:32])
                digest, filled = hashlib.sha256(), 0
    if filled:
        out.append(digest.hexdigest()[:32])
    return out


def fsync_dir(directory: Path) -> None:
    # Makes the rename durable; not every platform lets you open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_name(path: Path) -> Path:
    """The temp file a writer of ``path`` uses (its pid in the name, for stale-file cleanup)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def write(path: Path, meta: dict[str, Any], sections: Iterable[Section]) -> None:
    """Atomically write a snapshot (see module docstring). Several processes may write the same
    path at once: temp names are unique and the last rename wins."""
    sections = list(sections)
    if not sections:
        raise IndexInputError("a snapshot needs at least one section")
    table: list[dict[str, Any]] = []
    for section in sections:
        table.append({"name": section.name, "length": section.length, "digests": _digests(section)})
    # Offsets depend on the meta's own length (digits): lay out until it stops changing.
    for _ in range(10):
        meta_bytes = json.dumps({**meta, "sections": table}, sort_keys=True).encode()
        position = _aligned(_HEAD.size + len(meta_bytes) + _DIGEST_LEN)
        changed = False
        for entry in table:
            if entry.get("offset") != position:
                entry["offset"] = position
                changed = True
            position = _aligned(position + entry["length"])
        if not changed:
            break
    else:  # pragma: no cover - converges in two rounds
        raise IndexInputError("snapshot layout did not converge")
    full_meta = {**meta, "sections": table}
    meta_bytes = json.dumps(full_meta, sort_keys=True).encode()
    if len(meta_bytes) > _MAX_META:
        raise IndexInputError("snapshot metadata too large")
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, len(meta_bytes)) + meta_bytes
    head += hashlib.sha256(head).digest()

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(head)
            for section, entry in zip(sections, table, strict=True):
                fh.write(b"\0" * (entry["offset"] - fh.tell()))
                for chunk in section.chunks():
                    fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


class Snapshot:
    """An open snapshot file: its meta and its sections as zero-copy views of the mapped file.

    The mapping stays valid while any view is alive, even after the path is replaced by a newer
    snapshot (the old inode lives on until unmapped)."""

    def __init__(self, path: Path, mapped: mmap.mmap, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self._mapped = mapped
        self._sections = {entry["name"]: entry for entry in meta["sections"]}
        self._unchecked: dict[str, list[int]] = {}

    def names(self) -> list[str]:
        return list(self._sections)

    def raw(self, name: str) -> np.ndarray:
        """The section as a read-only uint8 array over the mapped file (no copy)."""
        entry = self._sections[name]
        return np.frombuffer(
            self._mapped, dtype=np.uint8, count=entry["length"], offset=entry["offset"]
        )

    def array(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The section viewed as an array of ``dtype``/``shape`` (read-only, no copy)."""
        raw = self.raw(name)
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if raw.size != expected:
            raise IndexCorruptError(
                f"{self.path}: section {name!r} holds {raw.size} bytes, {expected} expected"
            )
        return raw.view(dtype).reshape(shape)

    def _check_blocks(self, name: str, blocks: Iterable[int]) -> None:
        entry = self._sections[name]
        raw = self.raw(name)
        for block in blocks:
            data = memoryview(raw[block * BLOCK : (block + 1) * BLOCK])
            if _block_digest(data) != entry["digests"][block]:
                raise IndexCorruptError(
                    f"{self.path}: checksum mismatch in section {name!r}, block {block}"
                )

    def check(self, name: str, *, lazily: bool = False) -> None:
        """Verify a section now: fully, or (``lazily``) on a sample of blocks, the rest being
        left for :meth:`verify_rest`."""
        entry = self._sections.get(name)
        if entry is None:
            raise IndexCorruptError(f"{self.path}: no section {name!r}")
        count = len(entry["digests"])
        if count != (entry["length"] + BLOCK - 1) // BLOCK:
            raise IndexCorruptError(f"{self.path}: section {name!r} has a wrong block table")
        blocks = list(range(count))
        if lazily and count > SAMPLED_BLOCKS + 2:
            sample = {0, count - 1, *random.sample(range(1, count - 1), SAMPLED_BLOCKS)}
            self._check_blocks(name, sorted(sample))
            self._unchecked[name] = [b for b in blocks if b not in sample]
            return
        self._check_blocks(name, blocks)

    @property
    def pending(self) -> int:
        """Blocks not verified yet (see :meth:`verify_rest`)."""
        return sum(len(v) for v in self._unchecked.values())

    def verify_rest(self) -> None:
        """Check every block a lazy :meth:`check` skipped; raises IndexCorruptError."""
        for name, blocks in list(self._unchecked.items()):
            self._check_blocks(name, blocks)
            self._unchecked.pop(name, None)


def read(path: Path) -> Snapshot:
    """Map ``path`` and check its header, meta digest and size (sections are checked by the
    caller with :meth:`Snapshot.check`). Raises FileNotFoundError or IndexCorruptError."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < _HEAD.size + _DIGEST_LEN:
            raise IndexCorruptError(f"{path}: truncated ({size} bytes)")
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(path, mapped, size)
    except BaseException:
        with contextlib.suppress(BufferError):
            mapped.close()
        raise


def _parse(path: Path, mapped: mmap.mmap, size: int) -> Snapshot:
    magic, version, meta_len = _HEAD.unpack_from(mapped, 0)
    if magic != MAGIC:
        raise IndexCorruptError(f"{path}: not a voicesearch index snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise IndexCorruptError(f"{path}: unsupported snapshot format version {version}")
    end = _HEAD.size + meta_len
    if meta_len > _MAX_META or end + _DIGEST_LEN > size:
        raise IndexCorruptError(f"{path}: truncated or invalid metadata length")
    if hashlib.sha256(mapped[:end]).digest() != mapped[end : end + _DIGEST_LEN]:
        raise IndexCorruptError(f"{path}: checksum mismatch in the header")
    try:
        meta = json.loads(mapped[_HEAD.size : end])
    except ValueError as error:
        raise IndexCorruptError(f"{path}: unreadable metadata") from error
    if not isinstance(meta, dict) or not isinstance(meta.get("dim"), int):
        raise IndexCorruptError(f"{path}: metadata lacks 'dim'")
    sections = meta.get("sections")
    if not isinstance(sections, list):
        raise IndexCorruptError(f"{path}: metadata lacks the section table")
    expected_end = end + _DIGEST_LEN
    for entry in sections:
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("offset"), int)
            and isinstance(entry.get("length"), int)
            and isinstance(entry.get("digests"), list)
            and entry["offset"] == _aligned(expected_end)
            and entry["length"] >= 0
        )
        if not ok or entry["offset"] > size:
            raise IndexCorruptError(f"{path}: invalid section table")
        # The padding is not checksummed: it must be zeros (at most 4 KiB per section).
        if mapped[expected_end : entry["offset"]].strip(b"\0"):
            raise IndexCorruptError(f"{path}: checksum mismatch: non-zero padding before a section")
        expected_end = entry["offset"] + entry["length"]
    if expected_end != size:
        raise IndexCorruptError(
            f"{path}: size {size} does not match its header (truncated or extended)"
        )
    return Snapshot(path, mapped, meta)
