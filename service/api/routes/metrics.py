"""`GET /metrics`: Prometheus text exposition (needs a key like the other reads, when keys are on).

What the processes recorded (requests by route template and status, latencies, time per
pipeline stage: ``service.core.metrics``, summed over every worker) followed by the state read
now, by the worker that answers: models loaded, speakers per space, index size, type and
snapshot age, and the decision threshold in force per space with where it comes from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import anyio
from fastapi import APIRouter, Response
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from service.api.auth import RequireRead
from service.api.deps import VoiceSearchDep
from service.api.docs import error_responses
from service.core import metrics
from service.decisions.policy import SOURCE_CALIBRATED
from service.search.voicesearch import Health, IndexStats, SpaceCalibration

router = APIRouter(tags=["operations"], dependencies=[RequireRead])


def state_families(
    health: Health,
    enrolled: int,
    indexes: list[IndexStats],
    calibrations: list[SpaceCalibration],
) -> Iterable[Metric]:
    loaded = GaugeMetricFamily(
        "voicesearch_model_loaded", "1 when the role's model is loaded, else 0.", labels=["role"]
    )
    for role, status in health.models.items():
        loaded.add_metric([role], 1.0 if status.loaded else 0.0)
    speakers = GaugeMetricFamily(
        "voicesearch_speakers",
        "Searchable speakers per encoder space (enough speech enrolled).",
        labels=["space"],
    )
    for space, state in health.spaces.items():
        if state.indexed_speakers is not None:
            speakers.add_metric([space], state.indexed_speakers)
    stored = GaugeMetricFamily(
        "voicesearch_speakers_enrolled",
        "Speakers stored, searchable or not yet (incomplete enrollments included).",
        value=enrolled,
    )
    vectors = GaugeMetricFamily(
        "voicesearch_index_vectors",
        "Vectors in this worker's FAISS index per space (one per searchable speaker).",
        labels=["space", "index_type"],
    )
    age = GaugeMetricFamily(
        "voicesearch_index_snapshot_age_seconds",
        "Age of the space's index snapshot file (absent: no snapshot written yet).",
        labels=["space"],
    )
    lag = GaugeMetricFamily(
        "voicesearch_index_changes_behind",
        "Change-log rows the answering worker's index had not applied when scraped (each search "
        "and each scrape applies them first: the lag since this worker's last search).",
        labels=["space", "pid"],
    )
    for index in indexes:
        vectors.add_metric([index.space, index.index_type], index.vectors)
        lag.add_metric([index.space, str(os.getpid())], index.changes_behind)
        if index.snapshot_age_s is not None:
            age.add_metric([index.space], index.snapshot_age_s)
    threshold = GaugeMetricFamily(
        "voicesearch_decision_threshold",
        "Threshold in force for is_match per space; `source`: calibrated, shipped (the t(N) "
        "rule for the current gallery size) or setting (an operator's fixed threshold).",
        labels=["space", "score_type", "source"],
    )
    calibrated = GaugeMetricFamily(
        "voicesearch_calibrated",
        "1 when the space's threshold comes from a stored calibration, else 0.",
        labels=["space"],
    )
    for space in calibrations:
        decision = space.decision
        threshold.add_metric(
            [space.space, decision.score_type, decision.source], decision.threshold
        )
        calibrated.add_metric([space.space], 1.0 if decision.source == SOURCE_CALIBRATED else 0.0)
    inference = health.inference
    queue = GaugeMetricFamily(
        "voicesearch_inference_queue",
        "The answering worker's inference queue: steps running and waiting for a slot, requests "
        "admitted, and the admission capacity (beyond it: 503 overloaded).",
        labels=["state", "pid"],
    )
    pid = str(os.getpid())
    for state, count in (
        ("running", inference.running),
        ("waiting", inference.waiting),
        ("admitted", inference.admitted),
        ("capacity", inference.concurrency + inference.max_waiting),
    ):
        queue.add_metric([state, pid], count)
    return [loaded, speakers, stored, vectors, age, lag, queue, threshold, calibrated]


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "Prometheus text format."},
        **error_responses(401, 403),
    },
    summary="Prometheus metrics (all workers)",
)
async def prometheus_metrics(voice: VoiceSearchDep) -> Response:
    indexes = await voice.index_stats()  # first: it brings this worker's index up to date
    health = await voice.health()
    _, enrolled = await voice.list_speakers(offset=0, limit=1, name=None, metadata=None)
    families = state_families(health, enrolled, indexes, await voice.calibration_in_force())
    body = await anyio.to_thread.run_sync(metrics.exposition, families)
    return Response(body, media_type=metrics.CONTENT_TYPE)
