"""Index maintenance that runs beside the live index: at most one job per space at a time.

The gallery asks for a job (a reload after ``index rebuild`` elsewhere, a rebuild when
tombstones pile up or a quantiser needs training, a full check of a memory-mapped snapshot)
while it holds its lock; jobs only *start* after the lock is released (:meth:`Jobs.start_due`),
so a job can take the file lock and the gallery lock in that order without ever deadlocking.

A job runs in a daemon thread at a lower CPU priority (nice +10 for that thread, Linux) with
one OpenMP thread, so request handling keeps the cores it needs; ``background=False`` runs
jobs inline in the caller instead (the CLI and tests that want the result at once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable

import faiss

logger = logging.getLogger(__name__)

#: Niceness added to a maintenance thread.
JOB_NICENESS = 10


class Jobs:
    def __init__(self, *, background: bool = True) -> None:
        self.background = background
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}
        self._due: dict[str, tuple[str, Callable[[], None]]] = {}

    def ask(self, space: str, name: str, work: Callable[[], None]) -> None:
        """Ask for ``work`` on ``space`` (ignored while a job for that space is due or runs)."""
        with self._lock:
            if space in self._due or space in self._running:
                return
            self._due[space] = (name, work)

    def busy(self, space: str) -> bool:
        with self._lock:
            return space in self._due or space in self._running

    def start_due(self) -> None:
        """Start what was asked for. Call it WITHOUT holding the gallery lock."""
        with self._lock:
            due, self._due = self._due, {}
        for space, (name, work) in due.items():
            if not self.background:
                self._run(space, name, work, background=False)
                continue
            thread = threading.Thread(
                target=self._run,
                args=(space, name, work),
                kwargs={"background": True},
                name=f"index-{name}-{space}",
                daemon=True,
            )
            with self._lock:
                self._running[space] = thread
            thread.start()

    def _run(self, space: str, name: str, work: Callable[[], None], *, background: bool) -> None:
        if background:
            faiss.omp_set_num_threads(1)  # OpenMP settings are per thread
            with contextlib.suppress(AttributeError, OSError):
                tid = threading.get_native_id()
                os.setpriority(
                    os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + JOB_NICENESS
                )
        try:
            work()
        except Exception:
            logger.exception("index %s: %s failed; it will be asked for again", space, name)
        finally:
            with self._lock:
                self._running.pop(space, None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for running jobs (tests, shutdown)."""
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(timeout)
