"""Calibration (``voicesearch calibrate``): fit the open-set rule on the user's audio and store it.

:func:`calibrate`: genuine and impostor score distributions on a labelled manifest, measured
through the service's own pipeline (decode → VAD/quality → encoder → gallery search, with
AS-norm where it is on) in a fresh temporary store (``service.evaluation.trials``, every probe
in every loaded space). Per space it fits the exponential tail of the impostor scores
(u = 95th percentile, β = mean excess above u; ``service.decisions.openset``), which gives the
threshold t(N) for any gallery size N at the FPIR target; then it measures FPIR (unenrolled
probes matched) and FNIR (enrolled probes not returned as the right match) on the manifest's own
gallery at t(N_manifest), and *predicts* both at the live gallery size and at N = 10, 100, 1000
(labelled as model predictions). The EER, the pair FAR/FRR at t and a logistic calibration
(``match_probability``) are kept as before. :func:`store_calibrations` writes them (the tail and
the open-set figures go into the row's ``details``); the rule in force is then chosen by
``service.decisions.policy.DecisionPolicy``.

Manifest: the format of ``voicesearch eval`` (``service.evaluation.trials``). Probes of speakers
with no enroll rows are open-set impostors: they add impostor trials and the FPIR measurement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.bootstrap import temporary_voicesearch
from service.core.settings import Settings
from service.decisions.openset import TailFit, fit_tail, open_set_rates
from service.decisions.probe_quality import QualityTails, to_meta
from service.decisions.scoring import LogisticCalibration, eer, fit_logistic_calibration, rates_at
from service.evaluation.quality_fit import (
    MIN_CLASS_IMPOSTORS,
    NO_CLASS,
    class_bounds,
    fit_classes,
    probe_bars,
    probe_class,
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
from storage.audit import Actor
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
    # Per probe (manifest order): its speaker is enrolled, and the first candidate (by cosine,
    # as find-match ranks) is it; probe_best is that candidate's score.
    probe_enrolled: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    probe_top1: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    probe_best: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # Per probe: speech was detected, so the service decides it (without, it is ``undecided``:
    # never a match). Empty: every probe decided.
    probe_decided: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # Per probe and per impostor score: the probe's quality class (``quality_fit``; "" for
    # none). Empty: no probe in a class.
    probe_class: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    impostor_class: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))


@dataclass(frozen=True)
class OpenSetPoint:
    """FPIR/FNIR of t(N) at one gallery size; ``measured`` False: a model prediction."""

    gallery_size: int
    threshold: float
    fpir: float | None
    fnir: float | None
    measured: bool

    def summary(self) -> dict[str, Any]:
        return {
            "gallery_size": self.gallery_size,
            "threshold": round(self.threshold, 4),
            "fpir": None if self.fpir is None else round(self.fpir, 4),
            "fnir": None if self.fnir is None else round(self.fnir, 4),
            "kind": "measured" if self.measured else "model prediction",
        }


@dataclass
class SpaceCalibration:
    space: str
    model_identity: str
    score_type: str
    tail: TailFit
    fpir_target: float
    measured: OpenSetPoint  # on the manifest's own gallery
    predictions: list[OpenSetPoint]  # live gallery size and N = 10, 100, 1000
    far: float  # pair rates at the measured threshold
    frr: float
    eer: float
    eer_threshold: float
    n_genuine: int
    n_impostor: int
    n_speakers: int
    logistic: LogisticCalibration
    genuine_min: float
    impostor_max: float
    #: The probe quality classes with enough impostor scores for a tail of their own
    #: (``service.evaluation.quality_fit``); None: every probe on the pooled tail.
    classes: QualityTails | None = None

    @property
    def threshold(self) -> float:
        return self.measured.threshold

    def summary(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "score_type": self.score_type,
            "tail": {k: round(v, 6) for k, v in self.tail.to_dict().items()},
            "fpir_target": self.fpir_target,
            "measured": self.measured.summary(),
            "predictions": [p.summary() for p in self.predictions],
            "threshold": round(self.threshold, 4),
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
            "quality_tails": None if self.classes is None else to_meta(self.classes),
        }


#: Gallery sizes ``calibrate`` predicts FPIR/FNIR for, besides the live one.
PREDICTED_SIZES = (10, 100, 1000)


def open_set_point(
    scores: SpaceScores,
    tail: TailFit,
    fpir_target: float,
    n: int,
    classes: QualityTails | None = None,
) -> OpenSetPoint:
    """FPIR/FNIR of t(n) on the manifest's trials. At the manifest's own gallery size this is a
    measurement. At another size it is a model: each probe's best score is what it measured
    against the manifest's gallery, and each of the ``n − N`` extra impostors beats a score s
    with the tail probability P(S ≥ s) (so more speakers add false matches for unenrolled probes
    and take right matches away from enrolled ones). Below N it keeps the measured best scores
    (pessimistic for FPIR). Find-match ranks by cosine and decides the first candidate's score,
    so "an extra impostor beats the best score" is an approximation of "takes first place": close
    for the tail, where the two orders rarely differ. ``classes``: a probe of a quality class is
    held to the higher of t(n) and its class's, and its extra impostors follow its class's tail
    (``quality_fit``); the point's ``threshold`` is the pooled t(n)."""
    n_now = scores.n_speakers
    threshold = tail.threshold(fpir_target, n)
    best, enrolled, correct = scores.probe_best, scores.probe_enrolled, scores.probe_top1
    decided = scores.probe_decided if scores.probe_decided.size else np.ones(best.shape, bool)
    kinds = scores.probe_class if scores.probe_class.size else np.full(best.shape, NO_CLASS)
    bars, tails = probe_bars(classes, tail, fpir_target, n, kinds)
    if n == n_now:
        rates = open_set_rates(best, enrolled, correct, bars, decided)
        return OpenSetPoint(n, threshold, rates.fpir, rates.fnir, True)
    extra = max(n - n_now, 0)
    accepted = (best >= bars) & decided
    exceed = np.asarray(
        [
            t.exceedance(float(b)) if np.isfinite(b) else 1.0
            for b, t in zip(best, tails, strict=True)
        ]
    )
    survive = (1.0 - exceed) ** extra
    beaten = np.asarray([t.exceedance(float(x)) for t, x in zip(tails, bars, strict=True)])
    p_false = 1.0 - (1.0 - accepted) * (1.0 - beaten) ** extra
    fpir = float(p_false[~enrolled].mean()) if (~enrolled).any() else None
    hit = (accepted & correct) * survive
    fnir = float(1.0 - hit[enrolled].mean()) if enrolled.any() else None
    return OpenSetPoint(n, threshold, fpir, fnir, False)


def fit_space(
    scores: SpaceScores,
    identity: str,
    fpir_target: float,
    live_gallery_size: int | None = None,
    min_class_impostors: int = MIN_CLASS_IMPOSTORS,
) -> SpaceCalibration:
    if scores.genuine.size == 0 or scores.impostor.size == 0:
        raise ValueError(
            f"{scores.space}: need genuine and impostor trials "
            f"(got {scores.genuine.size} and {scores.impostor.size})"
        )
    try:
        tail = fit_tail(scores.impostor)
    except ValueError as exc:
        raise ValueError(f"{scores.space}: {exc}; add speakers or probes") from exc
    classes = fit_classes(
        class_bounds(),
        scores.impostor,
        scores.impostor_class,
        scores.probe_class,
        min_class_impostors,
    )
    measured = open_set_point(scores, tail, fpir_target, scores.n_speakers, classes)
    sizes = sorted({*PREDICTED_SIZES, *([live_gallery_size] if live_gallery_size else [])})
    predictions = [
        open_set_point(scores, tail, fpir_target, n, classes)
        for n in sizes
        if n != scores.n_speakers
    ]
    point = rates_at(scores.genuine, scores.impostor, measured.threshold)
    rate, eer_t = eer(scores.genuine, scores.impostor)
    return SpaceCalibration(
        space=scores.space,
        model_identity=identity,
        score_type=scores.score_type,
        tail=tail,
        fpir_target=fpir_target,
        measured=measured,
        predictions=predictions,
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
        classes=classes,
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
    decided: dict[str, list[bool]] = {s: [] for s in spaces}
    kinds: dict[str, list[str]] = {s: [] for s in spaces}  # each probe's quality class
    impostor_kinds: dict[str, list[str]] = {s: [] for s in spaces}
    bounds = class_bounds()
    for row in probes:
        # Normal profiles only: a stored calibration replaces the shipped rule, and with it the
        # telephone-band pair types (service.search.narrowband), for every probe.
        searched = await search_probe(vs, row, len(ids), spaces=spaces)
        progress(1)
        for found in searched:
            space, vector, hits = found.space, found.vector, found.hits
            decided[space].append(found.decided)
            kind = probe_class(bounds, found.speech_s, found.snr_db, found.narrowband)
            kinds[space].append(kind)
            raw = [h.score for h in hits]
            scored = raw
            if vs.normalizer is not None and vs.normalizer.enabled(space):
                scored = vs.normalizer.normalise(space, vector, [h.speaker_id for h in hits], raw)
            ranked = []
            for hit, cosine, score in zip(hits, raw, scored, strict=True):
                if score is None:
                    continue
                same = ids.get(hit.speaker_id) == row.speaker
                ranked.append((float(cosine), float(score), same))
                if not found.decided:
                    # Ranked, never decided by the service: not a trial of its threshold.
                    continue
                (genuine if same else impostor)[space].append(float(score))
                (cos_g if same else cos_i)[space].append(float(cosine))
                if not same:
                    impostor_kinds[space].append(kind)
            # As find-match answers: ranked by cosine, the first decided on its score.
            ranked.sort(key=lambda t: -t[0])
            top1[space].append(bool(ranked and ranked[0][2]))
            best[space].append(ranked[0][1] if ranked else -np.inf)
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
            np.asarray(decided[s], dtype=bool),
            np.asarray(kinds[s], dtype=object),
            np.asarray(impostor_kinds[s], dtype=object),
        )
        for s in spaces
    }


def calibrate(
    settings: Settings,
    models: ModelRegistry,
    rows: list[Row],
    *,
    live_gallery_sizes: Mapping[str, int] | None = None,
    show_progress: bool = False,
) -> dict[str, SpaceCalibration]:
    """Fit every loaded space's tail at ``settings.fpir_target``; ``live_gallery_sizes``: the
    operator's searchable speakers per space, for the predictions at the size in force."""
    with progress_bar("calibrate", work_items(rows), enabled=show_progress) as bar:
        scores = measure_scores(settings, models, rows, bar.update)
    identities = {space: enc.identity for space, enc in models.encoders.items()}
    live = dict(live_gallery_sizes or {})
    return {
        space: fit_space(space_scores, identities[space], settings.fpir_target, live.get(space))
        for space, space_scores in scores.items()
    }


def store_calibrations(
    store: CalibrationStore,
    results: Mapping[str, SpaceCalibration],
    source: str,
    actor: Actor | None = None,
) -> list[CalibrationRecord]:
    """One row per space (each with its audit row when ``actor`` is given). The fixed
    ``threshold``/``target_far`` columns hold t(N) at the manifest's gallery size and the FPIR
    target (what older readers expect); the tail that drives t(N) and the open-set figures go
    into ``details``."""
    return [
        store.add(
            space=c.space,
            model_identity=c.model_identity,
            score_type=c.score_type,
            threshold=c.threshold,
            target_far=c.fpir_target,
            far=c.far,
            frr=c.frr,
            eer=c.eer,
            n_genuine=c.n_genuine,
            n_impostor=c.n_impostor,
            n_speakers=c.n_speakers,
            logistic=c.logistic.to_dict(),
            source=source,
            actor=actor,
            details={
                "tail": c.tail.to_dict(),
                "fpir_target": c.fpir_target,
                "gallery_size": c.measured.gallery_size,
                "fpir": c.measured.fpir,
                "fnir": c.measured.fnir,
                "predictions": [p.summary() for p in c.predictions],
                "eer_threshold": c.eer_threshold,
                "genuine_min": c.genuine_min,
                "impostor_max": c.impostor_max,
                # The probe quality classes fitted on this manifest (probe_quality.load_rules
                # reads them back); absent: every probe on the pooled tail.
                **({"quality_tails": to_meta(c.classes)} if c.classes is not None else {}),
            },
        )
        for c in results.values()
    ]
