"""Calibration (``voicesearch calibrate``): measure the decision thresholds and store them.

:func:`calibrate`: genuine and impostor score distributions on a labelled manifest, measured
through the service's own pipeline (decode → VAD/quality → encoder → gallery search, with
AS-norm when it is on) in a fresh temporary store (``service.evaluation.trials``, every probe
in every loaded space); per space the lowest threshold meeting the target FAR, the EER, and a
logistic calibration. :func:`store_calibrations` writes them; the thresholds in force are then
chosen by ``service.decisions.policy.DecisionPolicy``.

Manifest: the format of ``voicesearch eval`` (``service.evaluation.trials``). Probes of speakers
with no enroll rows are open-set impostors: they only add impostor trials.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.bootstrap import temporary_voicesearch
from service.core.settings import Settings
from service.decisions.scoring import (
    LogisticCalibration,
    eer,
    fit_logistic_calibration,
    threshold_for_far,
)
from service.evaluation.trials import (
    Progress,
    Row,
    enroll_speakers,
    no_progress,
    probe_rows,
    progress_bar,
    search_probe,
    work_items,
)
from service.pipeline.registry import ModelRegistry
from service.search.voicesearch import VoiceSearch
from storage.calibration import CalibrationRecord, CalibrationStore

# ------------------------------------------------------------------------------------------------
# Measuring: voicesearch calibrate
# ------------------------------------------------------------------------------------------------


@dataclass
class SpaceScores:
    space: str
    score_type: str
    genuine: np.ndarray
    impostor: np.ndarray
    n_speakers: int
    cosine_genuine: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cosine_impostor: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # Per probe (manifest order): its speaker is enrolled, and the best-scoring candidate is it.
    probe_enrolled: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    probe_top1: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    probe_best: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class SpaceCalibration:
    space: str
    model_identity: str
    score_type: str
    threshold: float
    target_far: float
    far: float
    frr: float
    eer: float
    eer_threshold: float
    n_genuine: int
    n_impostor: int
    n_speakers: int
    logistic: LogisticCalibration
    genuine_min: float
    impostor_max: float

    def summary(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "score_type": self.score_type,
            "threshold": round(self.threshold, 4),
            "target_far": self.target_far,
            "far": round(self.far, 4),
            "frr": round(self.frr, 4),
            "eer": round(self.eer, 4),
            "eer_threshold": round(self.eer_threshold, 4),
            "genuine_min": round(self.genuine_min, 4),
            "impostor_max": round(self.impostor_max, 4),
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "n_speakers": self.n_speakers,
            "logistic": self.logistic.to_dict(),
        }


def fit_space(scores: SpaceScores, identity: str, target_far: float) -> SpaceCalibration:
    if scores.genuine.size == 0 or scores.impostor.size == 0:
        raise ValueError(
            f"{scores.space}: need genuine and impostor trials "
            f"(got {scores.genuine.size} and {scores.impostor.size})"
        )
    point = threshold_for_far(scores.genuine, scores.impostor, target_far)
    rate, eer_t = eer(scores.genuine, scores.impostor)
    return SpaceCalibration(
        space=scores.space,
        model_identity=identity,
        score_type=scores.score_type,
        threshold=float(point.threshold),
        target_far=float(target_far),
        far=point.far,
        frr=point.frr,
        eer=float(rate),
        eer_threshold=float(eer_t),
        n_genuine=int(scores.genuine.size),
        n_impostor=int(scores.impostor.size),
        n_speakers=scores.n_speakers,
        logistic=fit_logistic_calibration(scores.genuine, scores.impostor),
        genuine_min=float(scores.genuine.min()),
        impostor_max=float(scores.impostor.max()),
    )


def measure_scores(
    settings: Settings, models: ModelRegistry, rows: list[Row], progress: Progress = no_progress
) -> dict[str, SpaceScores]:
    """Enroll and probe ``rows`` through a VoiceSearch on a fresh temporary store; per loaded
    space, the genuine and impostor trial scores (AS-norm scores where it is on)."""
    # Every enroll row is scored, however little speech it has.
    with temporary_voicesearch(settings, models, min_enroll_speech_s=0.0) as vs:
        return asyncio.run(_scores(vs, rows, progress))


async def _scores(vs: VoiceSearch, rows: list[Row], progress: Progress) -> dict[str, SpaceScores]:
    enrolled = await enroll_speakers(vs, rows, progress)
    ids = {speaker_id: speaker for speaker, speaker_id in enrolled.items()}
    probes = probe_rows(rows)
    spaces = list(vs.models.encoders)
    genuine: dict[str, list[float]] = {s: [] for s in spaces}
    impostor: dict[str, list[float]] = {s: [] for s in spaces}
    cos_g: dict[str, list[float]] = {s: [] for s in spaces}
    cos_i: dict[str, list[float]] = {s: [] for s in spaces}
    top1: dict[str, list[bool]] = {s: [] for s in spaces}
    best: dict[str, list[float]] = {s: [] for s in spaces}
    for row in probes:
        searched = await search_probe(vs, row, len(ids), spaces=spaces)
        progress(1)
        for found in searched:
            space, vector, hits = found.space, found.vector, found.hits
            raw = [h.score for h in hits]
            scored = raw
            if vs.normalizer is not None and vs.normalizer.enabled(space):
                scored = vs.normalizer.normalise(space, vector, [h.speaker_id for h in hits], raw)
            ranked = []
            for hit, cosine, score in zip(hits, raw, scored, strict=True):
                if score is None:
                    continue
                same = ids.get(hit.speaker_id) == row.speaker
                (genuine if same else impostor)[space].append(float(score))
                (cos_g if same else cos_i)[space].append(float(cosine))
                ranked.append((float(score), same))
            ranked.sort(key=lambda t: -t[0])
            top1[space].append(bool(ranked and ranked[0][1]))
            best[space].append(ranked[0][0] if ranked else -np.inf)
    policy_types = {s: vs.policy.score_type(s) for s in spaces}
    return {
        s: SpaceScores(
            s,
            policy_types[s],
            np.asarray(genuine[s]),
            np.asarray(impostor[s]),
            len(ids),
            np.asarray(cos_g[s]),
            np.asarray(cos_i[s]),
            np.asarray([r.speaker in enrolled for r in probes], dtype=bool),
            np.asarray(top1[s], dtype=bool),
            np.asarray(best[s], dtype=np.float64),
        )
        for s in spaces
    }


def calibrate(
    settings: Settings,
    models: ModelRegistry,
    rows: list[Row],
    target_far: float,
    *,
    show_progress: bool = False,
) -> dict[str, SpaceCalibration]:
    with progress_bar("calibrate", work_items(rows), enabled=show_progress) as bar:
        scores = measure_scores(settings, models, rows, bar.update)
    identities = {space: enc.identity for space, enc in models.encoders.items()}
    return {
        space: fit_space(space_scores, identities[space], target_far)
        for space, space_scores in scores.items()
    }


def store_calibrations(
    store: CalibrationStore, results: Mapping[str, SpaceCalibration], source: str
) -> list[CalibrationRecord]:
    return [
        store.add(
            space=c.space,
            model_identity=c.model_identity,
            score_type=c.score_type,
            threshold=c.threshold,
            target_far=c.target_far,
            far=c.far,
            frr=c.frr,
            eer=c.eer,
            n_genuine=c.n_genuine,
            n_impostor=c.n_impostor,
            n_speakers=c.n_speakers,
            logistic=c.logistic.to_dict(),
            source=source,
            details={
                "eer_threshold": c.eer_threshold,
                "genuine_min": c.genuine_min,
                "impostor_max": c.impostor_max,
            },
        )
        for c in results.values()
    ]
