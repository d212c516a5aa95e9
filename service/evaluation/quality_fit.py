"""``voicesearch calibrate``: the probe quality classes' stricter tails, fitted on one's own audio.

The shipped classes (``service.decisions.probe_quality``: long and clean, long and noisy, medium
and clean) were fitted on the issue-12 calibration corpus against the shipped pooled tail, so
they cannot be laid over a calibration's own pooled tail. ``calibrate`` fits them again on the
manifest: the impostor scores of each class's probes (by the shipped class bounds: net speech
and estimated SNR, wideband probes only, as find-match classes them) get their own tail where
the class has enough of them from enough probes (:data:`MIN_CLASS_IMPOSTORS`,
:data:`MIN_CLASS_PROBES`); a class with fewer keeps the calibrated pooled tail. As with the
shipped classes, a probe is then held to the higher of the pooled and its class's t(N), never
lower, and the FPIR/FNIR that ``calibrate`` reports are measured with those per-probe bars.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from service.decisions.bandwidth import PAIR_WIDEBAND
from service.decisions.cohort import FALLBACK, shipped_cohort
from service.decisions.openset import TailFit, fit_tail
from service.decisions.probe_quality import QualityTails, load_rules

#: Impostor scores a class needs for a tail of its own: u is their 95th percentile and β the
#: mean of the ~100 scores above it (fewer make the bar of every probe of the class a guess).
MIN_CLASS_IMPOSTORS = 2000
#: ... and probes: 2,000 scores from a handful of probes against a large gallery are a handful
#: of voices' tails, not the class's.
MIN_CLASS_PROBES = 50

#: A probe in no class (short, noisy and short, narrowband, or quality unknown).
NO_CLASS = ""


def class_bounds() -> QualityTails | None:
    """The shipped class definitions; only their bounds are used here (the tails are refitted)."""
    return load_rules(shipped_cohort(FALLBACK).meta.get("quality_tails"))


def probe_class(
    bounds: QualityTails | None, speech_s: float | None, snr_db: float | None, narrowband: bool
) -> str:
    """The class find-match would give this probe's wideband decision, or :data:`NO_CLASS`."""
    if bounds is None or narrowband:
        return NO_CLASS
    rule = bounds.rule_for(speech_s, snr_db)
    return NO_CLASS if rule is None else rule.name


def fit_classes(
    bounds: QualityTails | None,
    impostor: np.ndarray,
    impostor_class: np.ndarray,
    probe_classes: np.ndarray,
    min_impostors: int = MIN_CLASS_IMPOSTORS,
    min_probes: int = MIN_CLASS_PROBES,
) -> QualityTails | None:
    """Per class with at least ``min_impostors`` impostor scores (``impostor_class`` names each
    score's probe class) from at least ``min_probes`` probes (``probe_classes``), its own
    type-A tail; None when no class has enough."""
    if bounds is None or impostor_class.size == 0:  # no probe was classed
        return None
    if impostor_class.size != impostor.size:
        raise ValueError(
            f"{impostor_class.size} impostor classes for {impostor.size} impostor scores: "
            "the calibration trials are misaligned"
        )
    rules = []
    for rule in bounds:
        scores = impostor[impostor_class == rule.name]
        probes = int(np.count_nonzero(probe_classes == rule.name))
        if scores.size >= min_impostors and probes >= min_probes:
            rules.append(dataclasses.replace(rule, tails={PAIR_WIDEBAND: fit_tail(scores)}))
    return QualityTails(tuple(rules)) if rules else None


def probe_bars(
    classes: QualityTails | None,
    pooled: TailFit,
    fpir: float,
    n: int,
    probe_classes: np.ndarray,
) -> tuple[np.ndarray, list[TailFit]]:
    """Each probe's bar at gallery size ``n`` (the higher of the pooled and its class's t(n)),
    and the tail its impostor scores follow (its class's where fitted, else the pooled one)."""
    bars = np.full(probe_classes.shape, pooled.threshold(fpir, n), dtype=np.float64)
    tails = [pooled] * probe_classes.size
    for rule in classes or ():
        own = rule.tails.get(PAIR_WIDEBAND)
        if own is None:
            continue
        members = np.flatnonzero(probe_classes == rule.name)
        bars[members] = rule.threshold(PAIR_WIDEBAND, pooled, fpir, n)
        for i in members:
            tails[i] = own
    return bars, tails
