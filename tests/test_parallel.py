"""The ``alone`` lock and test order that let the suite run on several xdist workers
(``tests/parallel.py``). ``flock`` locks belong to an open file, so two :class:`AloneLock` in one
process contend exactly as two workers do; threads stand in for the workers here."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.parallel import AloneLock, order_units

WAIT_S = 0.3  # long enough to see a thread blocked; a blocked one is joined after its release


class Marked:
    """The one thing the lock and the order read from a pytest item: its markers."""

    def __init__(self, *markers: str) -> None:
        self.markers = set(markers)

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None


def acquire_in_thread(lock: AloneLock, exclusive: bool) -> threading.Thread:
    thread = threading.Thread(target=lock.acquire, args=(exclusive,), daemon=True)
    thread.start()
    return thread


def test_shared_holders_run_together(tmp_path: Path) -> None:
    first, second = AloneLock(tmp_path), AloneLock(tmp_path)
    first.acquire(exclusive=False)
    thread = acquire_in_thread(second, exclusive=False)
    thread.join(timeout=5)
    assert not thread.is_alive() and second.mode == "shared"
    first.release()
    second.release()


def test_an_alone_test_waits_for_running_tests_and_blocks_new_ones(tmp_path: Path) -> None:
    running, alone, newcomer = AloneLock(tmp_path), AloneLock(tmp_path), AloneLock(tmp_path)
    running.acquire(exclusive=False)
    waiting = acquire_in_thread(alone, exclusive=True)
    waiting.join(timeout=WAIT_S)
    assert waiting.is_alive(), "the alone test started beside a running test"
    # A test that wants to start now queues behind the waiting alone test (no starvation).
    queued = acquire_in_thread(newcomer, exclusive=False)
    queued.join(timeout=WAIT_S)
    assert queued.is_alive(), "a new test started while an alone test was waiting"

    running.after(None)  # the running test ends
    waiting.join(timeout=5)
    assert not waiting.is_alive() and alone.mode == "exclusive"
    queued.join(timeout=WAIT_S)
    assert queued.is_alive(), "a test started beside the alone test"

    alone.after(None)
    queued.join(timeout=5)
    assert not queued.is_alive() and newcomer.mode == "shared"
    newcomer.release()


def test_consecutive_alone_tests_keep_the_lock(tmp_path: Path) -> None:
    alone, other = AloneLock(tmp_path), AloneLock(tmp_path)
    alone.acquire(exclusive=True)
    alone.after(Marked("alone"))  # the next test is alone too: kept
    assert alone.mode == "exclusive"
    blocked = acquire_in_thread(other, exclusive=False)
    blocked.join(timeout=WAIT_S)
    assert blocked.is_alive()
    alone.acquire(exclusive=True)  # already held: returns at once
    alone.after(Marked("slow"))  # the next one is not: released
    assert alone.mode is None
    blocked.join(timeout=5)
    assert not blocked.is_alive() and other.mode == "shared"
    other.release()


def test_modules_with_alone_tests_first_then_modules_with_long_tests(
    pytester: pytest.Pytester,
) -> None:
    """Real pytest items, ordered as an xdist worker orders them; modules stay contiguous."""
    pytester.makepyfile(
        test_a="def test_quick(): pass\ndef test_quick2(): pass",
        test_b="""
import pytest
def test_b1(): pass
@pytest.mark.slow
def test_b2(): pass
""",
        test_c="""
import pytest
def test_c1(): pass
@pytest.mark.alone
def test_c2(): pass
""",
    )
    items, _ = pytester.inline_genitems("-p", "no:cacheprovider")
    order_units(items)
    assert [item.name for item in items] == [
        "test_c2",  # alone, first in its module
        "test_c1",
        "test_b1",  # a module with a slow test
        "test_b2",
        "test_quick",
        "test_quick2",
    ]


@pytest.mark.parametrize("exclusive", [False, True])
def test_release_without_holding_is_harmless(tmp_path: Path, exclusive: bool) -> None:
    lock = AloneLock(tmp_path)
    lock.release()
    lock.acquire(exclusive)
    lock.release()
    lock.release()
    assert lock.mode is None
