"""Back-pressure for model inference: a bounded queue in front of a few inference slots.

On a small CPU box one inference already uses every core, so inferences run at most
``concurrency`` at once (a FIFO :class:`anyio.CapacityLimiter`). Without a bound on the requests
waiting for a slot, a burst turned into a 20-second queue that answered nobody in time. So a
request that needs inference is first *admitted* (:meth:`InferenceQueue.admitted`): at most
``concurrency + max_waiting`` requests at once per process; beyond that it is refused at once
with ``503 overloaded`` and a ``Retry-After`` estimated from recent inference times.

Each *step* of an admitted request (decode + VAD of one file, embedding of one file) takes a slot
on its own (:meth:`InferenceQueue.run`). The limiter is first come, first served, so a search
that arrives during a 20-file enrollment waits for one file's step, not for all twenty. An
admitted request keeps its admission between steps: a long enrollment is never refused halfway.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from service.core import errors

T = TypeVar("T")

#: Step time assumed before any inference was measured (seconds).
INITIAL_STEP_S = 0.5
#: Weight of the newest step in the running mean of step times.
SMOOTHING = 0.2


@dataclass(frozen=True)
class QueueDepth:
    """What ``/health`` reports about inference."""

    running: int  # steps holding an inference slot now
    waiting: int  # steps waiting for a slot
    admitted: int  # requests admitted (running, waiting, or between their steps)
    concurrency: int
    max_waiting: int  # requests allowed beyond the running ones before 503 overloaded


class InferenceQueue:
    def __init__(self, concurrency: int, max_waiting: int) -> None:
        if concurrency < 1 or max_waiting < 0:
            raise ValueError("concurrency must be >= 1 and max_waiting >= 0")
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self.limiter = anyio.CapacityLimiter(concurrency)
        # Only touched from the event loop (admission) or as one float store (step times).
        self._admitted = 0
        self._step_s = INITIAL_STEP_S

    @property
    def capacity(self) -> int:
        """Requests admitted at most at once."""
        return self.concurrency + self.max_waiting

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the queue ahead, at the recent step time."""
        ahead = max(1, self._admitted - self.concurrency + 1)
        return max(1, min(60, math.ceil(ahead * self._step_s / self.concurrency)))

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Admit one request for its inference steps, or refuse it: 503 ``overloaded``."""
        if self._admitted >= self.capacity:
            retry = self.retry_after_s()
            raise errors.Overloaded(
                f"{self._admitted} requests are already waiting for model inference; "
                f"retry in about {retry} s",
                details={"admitted": self._admitted, "capacity": self.capacity},
                headers={"Retry-After": str(retry)},
            )
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread once an inference slot is free (first come, first
        served)."""

        def timed() -> T:
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                took = time.perf_counter() - started
                self._step_s += SMOOTHING * (took - self._step_s)

        return await anyio.to_thread.run_sync(timed, limiter=self.limiter)

    def depth(self) -> QueueDepth:
        stats = self.limiter.statistics()
        return QueueDepth(
            running=int(stats.borrowed_tokens),
            waiting=int(stats.tasks_waiting),
            admitted=self._admitted,
            concurrency=self.concurrency,
            max_waiting=self.max_waiting,
        )
