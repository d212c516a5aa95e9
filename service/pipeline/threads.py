"""How many threads model inference may use, and OpenMP that sleeps instead of spinning.

On a shared CPU the worst thing an inference can do is run more threads than it has cores, or
spin-wait at barriers for a thread whose core was taken by another process: measured on this
project's 2-core box, one 3 s clip took 2.9-4.8 s with torch on 2 OpenMP threads beside another
busy process, against 0.6-1.8 s on 1 thread, while burning 5x the CPU. So:

* :func:`available_cpus` counts the cores this process may really use: its CPU affinity
  (``sched_getaffinity``: taskset, cpusets) and its cgroup CPU quota (``cpu.max`` in cgroup v2,
  ``cpu.cfs_quota_us`` in v1: Docker's ``--cpus``, Kubernetes limits), not ``os.cpu_count()``.
* :func:`inference_threads` shares them out between the server's worker processes.
* :func:`quiet_openmp` sets ``OMP_WAIT_POLICY=PASSIVE`` so that libgomp (torch's OpenMP) threads
  sleep as soon as their work is done. libgomp reads it once, when torch is first imported, so it
  must run before that; the CLI does it first thing. ONNX Runtime has its own thread pool and
  takes the same choice per session (``allow_spinning=0``, ``service.pipeline.backends``).
* Tiny models (the Silero VAD) run on one thread: their calls last well under a millisecond, so
  a thread pool only adds synchronisation (``service.pipeline.vad``).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

#: cgroup files holding the CPU quota: v2 first, then v1.
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")

#: Environment set before torch loads, unless the operator chose otherwise.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def cgroup_cpu_limit(
    cpu_max: Path = CGROUP_V2_CPU_MAX,
    v1_quota: Path = CGROUP_V1_QUOTA,
    v1_period: Path = CGROUP_V1_PERIOD,
) -> float | None:
    """The cgroup CPU quota in cores (e.g. 1.5), or None when there is none or it is unreadable."""
    try:
        quota, _, period = cpu_max.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or "100000")
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text().strip())
        period_us = int(v1_period.read_text().strip())
    except (OSError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:  # -1: no limit
        return None
    return quota_us / period_us


def available_cpus() -> int:
    """Cores this process may use: its affinity set, capped by the cgroup quota (rounded up:
    a quota of 1.5 cores still lets two threads make progress)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def inference_threads(configured: int = 0, workers: int = 1) -> int:
    """Intra-op threads per inference: ``configured`` when set (> 0), else the available cores
    shared out between ``workers`` processes (at least one each)."""
    if configured > 0:
        return configured
    return max(1, available_cpus() // max(1, workers))


def quiet_openmp() -> None:
    """Make OpenMP threads sleep instead of spin (see the module docstring); the operator's own
    settings win. Only effective before torch is imported."""
    for key, value in OPENMP_ENV.items():
        os.environ.setdefault(key, value)


def configure_torch(threads: int) -> None:
    """torch's intra-op threads; one inter-op thread (the service parallelises across requests
    and processes, never inside one model call)."""
    import torch

    torch.set_num_threads(max(1, threads))
    # Raises when already set or once inter-op work has started: then keep what runs.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
