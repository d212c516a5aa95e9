"""Running the suite on several pytest-xdist workers (``pytest -n 2``) without changing a test.

Most tests are independent already: each worker has its own ``tmp_path`` tree (so its own tiny
models and model cache), its own throw-away PostgreSQL cluster (a session fixture), and every
server binds a free port. Three things need care, and live here:

* **Tests that measure time or contention run alone** (``@pytest.mark.alone``): a 1-second
  latency bound or a memory-growth check means nothing while the other worker loads a model on
  the same core. :class:`AloneLock` is a readers-writer lock over ``flock`` files shared by the
  workers of one run: every test holds it shared, an ``alone`` test exclusively. A turnstile in
  front keeps the shared holders from starving an exclusive one (a waiting ``alone`` test blocks
  new tests from starting; the running ones finish and it goes next). A worker keeps the
  exclusive lock while its next test is ``alone`` too, and :func:`order_units` runs them
  early, so the other worker waits for short tests, not for a 2-minute one.
* **Threads per worker**: torch defaults to one intra-op thread per core, so two workers would
  run 4 OpenMP threads on 2 cores (see ``service.pipeline.threads``: oversubscription is what
  makes inference slow on a shared box). :func:`worker_threads` shares the cores out.
* **Order** (:func:`order_units`, with ``--dist worksteal`` from ``pyproject.toml``): each
  worker starts on a contiguous half of this order and the idle one takes tests from the end
  of the other's queue, so a module mostly stays on one worker and its module-scoped fixtures
  (the real model's ONNX exports, a shared server) are built once. Modules with long tests
  come early, since a 1-2 minute test picked up last leaves the other worker idle. Not
  ``loadfile``/``loadgroup``: they schedule by node id, and schemathesis gives its 15 fuzz
  tests one node id under pytest 9, so 14 silently never ran (and pytest-xdist 3.8's groups
  are ignored under pytest 9: it renames ``item._nodeid``, which pytest 9 no longer reads).

Without xdist none of this applies: the tests run in collection order, with no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from pathlib import Path

import pytest

from service.pipeline.threads import available_cpus

#: Key under which the controller hands every worker the shared lock directory.
LOCK_DIR_KEY = "voicesearch_alone_lock_dir"


def is_alone(item: pytest.Item) -> bool:
    return item.get_closest_marker("alone") is not None


def is_heavy(item: pytest.Item) -> bool:
    """Long: a multi-process server test or one on the real model."""
    return any(item.get_closest_marker(name) is not None for name in ("slow", "real_model"))


def module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def order_units(items: list[pytest.Item]) -> None:
    """In an xdist worker: the order the workers split and steal from. ``alone`` tests first,
    together (the other worker waits for them once, at the start); then the rest of their
    modules, then modules with long tests (a long module picked up last leaves the other worker
    idle), then the rest; modules stay contiguous. Stable, so every worker computes the same
    order (xdist requires it)."""
    alone_modules = {module_of(item) for item in items if is_alone(item)}
    heavy_modules = {module_of(item) for item in items if is_heavy(item)}

    def key(item: pytest.Item) -> tuple[int, int]:
        module = module_of(item)
        rank = 0 if module in alone_modules else 1 if module in heavy_modules else 2
        return rank, 0 if is_alone(item) else 1

    items.sort(key=key)


def terminate_children() -> None:
    """SIGTERM every direct child of this process: in the xdist controller, its workers (it
    runs no test, so it starts nothing else). Linux lists them in /proc."""
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGTERM)


def worker_count() -> int:
    """Workers in this xdist run; 1 without xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def worker_threads() -> int:
    """Torch intra-op threads for one worker: the usable cores shared out, at least one."""
    return max(1, available_cpus() // worker_count())


class AloneLock:
    """Readers-writer lock across the worker processes of one run (module docstring)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # Opened once per worker and held for the run: flock locks belong to the open file.
        self._turnstile = os.open(directory / "turnstile", os.O_CREAT | os.O_RDWR, 0o600)
        self._main = os.open(directory / "main", os.O_CREAT | os.O_RDWR, 0o600)
        self.mode: str | None = None  # None, "shared" or "exclusive"

    def acquire(self, exclusive: bool) -> None:
        if exclusive:
            if self.mode == "exclusive":
                return  # kept from the previous ``alone`` test
            # Hold the turnstile while waiting and running: no new test starts meanwhile.
            fcntl.flock(self._turnstile, fcntl.LOCK_EX)
            fcntl.flock(self._main, fcntl.LOCK_EX)
            self.mode = "exclusive"
            return
        self.release()
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)  # wait behind a waiting exclusive test
        fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        fcntl.flock(self._main, fcntl.LOCK_SH)
        self.mode = "shared"

    def release(self) -> None:
        if self.mode is None:
            return
        fcntl.flock(self._main, fcntl.LOCK_UN)
        if self.mode == "exclusive":
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        self.mode = None

    def after(self, nextitem: pytest.Item | None) -> None:
        """After a test: keep an exclusive lock only while the next test is ``alone`` too."""
        if self.mode == "exclusive" and nextitem is not None and is_alone(nextitem):
            return
        self.release()
