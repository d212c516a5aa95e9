"""Prometheus metrics the service records, and their exposition, correct with several workers.

``voicesearch serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at an emptied folder under the data
directory before any worker starts (``service.commands.serve``). prometheus_client then keeps
every counter and histogram of every worker process in memory-mapped files there, and
:func:`exposition` sums them (``MultiProcessCollector``): whichever worker answers ``/metrics``,
the counts are the whole server's. Without that variable (tests, embedding the app yourself)
the metrics live in this process, in prometheus_client's default registry.

Only counters and histograms are recorded here. State (speakers, index size, thresholds in
force) is read when ``/metrics`` is scraped and handed to :func:`exposition` as ready metric
families (``service.api.routes.metrics``): a gauge written by each worker would need a
multiprocess aggregation mode and would go stale in workers that have not synced.

Which mode applies is decided when prometheus_client is first imported (it reads the variable
then), so nothing that ``voicesearch``'s command line imports at start-up may import this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds. Requests: a health check (~1 ms) to a long enrollment (tens of seconds on a CPU).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# One model step on one clip: milliseconds (decode, energy VAD) to seconds (a long clip's ECAPA).
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter(
    "voicesearch_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "voicesearch_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    buckets=REQUEST_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "voicesearch_inference_seconds",
    "Time of one pipeline stage on one clip: decode, vad, language_id, embedding; `model` is "
    "the encoder space for embeddings, else the stage's component.",
    ["stage", "model"],
    buckets=STAGE_BUCKETS,
)

#: The pipeline's stages, as the ``stage`` label spells them.
STAGE_DECODE = "decode"
STAGE_VAD = "vad"
STAGE_LANGUAGE_ID = "language_id"
STAGE_EMBEDDING = "embedding"


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_REQUEST_SECONDS.labels(method, route).observe(seconds)


@contextmanager
def timed(stage: str, model: str) -> Iterator[None]:
    """Record the time of the ``with`` block as one ``stage`` of ``model`` (also if it raises:
    a refused clip cost that time too)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        INFERENCE_SECONDS.labels(stage, model).observe(time.perf_counter() - started)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class _Families:
    """A one-off collector for metric families computed at scrape time."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(state: Iterable[Metric] = ()) -> bytes:
    """The text exposition: every process's counters and histograms, then ``state``."""
    if multiprocess_mode():
        recorded = CollectorRegistry()
        multiprocess.MultiProcessCollector(recorded)
    else:
        recorded = REGISTRY
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(_Families(state))  # type: ignore[arg-type]
    return generate_latest(recorded) + generate_latest(scraped)
