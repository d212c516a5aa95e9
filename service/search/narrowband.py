"""The search of a narrowband probe (source ≤ 8 kHz) over a space's telephone-band view.

``service.decisions.bandwidth`` says what the view is and how its pairs are decided; this module
runs it against the gallery. For one probe vector:

1. search the derived index (``<space>-nb``: telephone-band profiles) and AS-norm the pool
   against the space's own fixed cohort;
2. label each candidate's pair type: ``C`` when every clip of the speaker was enrolled at
   ≤ 8 kHz (its telephone-band profile *is* its normal profile), else ``B``;
3. speakers that have no telephone-band profile (enrolled before the upgrade: no audio is stored
   to build one) are still searched, in the normal index, and scored as today (type ``A``);
4. every score is mapped onto the space's own scale (``NarrowbandView.to_common``) and the
   candidates are ranked on it; the caller decides with the space's t(N) at N = the normal
   gallery size, exactly as for a wideband probe. For a probe of a quality class with a strict
   telephone-band tail (long and clean) those pairs' own threshold is their strict tail's
   (``service.decisions.probe_quality``): the map sends it onto the same t(N), and the answer
   says ``threshold_quality: long_clean``.

Unlike a wideband probe (ranked on the bare model's cosine, ``service.search.matching``), a
narrowband one is ranked on the mapped score: its candidates are scored against different kinds
of profile (telephone-band, native narrowband, normal), whose cosines are not on one scale, and
there is no bare-model ranking to keep (the bare model scores against the wideband profiles).
Measured on the issue-12 TEST split, telephone band: top-1 55.3 % bare model, 68.4 % ranked on
the mapped score, 67.1 % on the raw cosine of the scored profile (decisions equal).

Only when the space decides on the shipped default rule: an operator's fixed threshold or a
calibration of their own was measured on the normal scores, and a narrowband probe then goes the
ordinary way (:meth:`NarrowbandSearch.search` returns None, and the caller says so).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from service.decisions.bandwidth import (
    PAIR_NATIVE,
    PAIR_TELEPHONE,
    PAIR_WIDEBAND,
    Bar,
    NarrowbandView,
    resolve_views,
)
from service.decisions.cohort import SpaceScoring
from service.decisions.normalization import AsNorm
from service.decisions.policy import SOURCE_SHIPPED, Decision, DecisionPolicy
from service.pipeline.telephone import TELEPHONE_RATE
from service.search.vector_store import Hit, VectorStore
from storage.records import SpeakerBrief
from storage.speakers import SpeakerStore

PROFILE_NORMAL = "normal"
PROFILE_TELEPHONE = "telephone_band"


@dataclass(frozen=True)
class RaisedBars:
    """A narrowband probe's bars per pair type where its quality class raised some of them."""

    quality: str  # the class's name, which the answer carries (``threshold_quality``)
    bars: Mapping[str, Bar]


@dataclass(frozen=True)
class Ranked:
    """One candidate of a narrowband search."""

    speaker: SpeakerBrief
    similarity: float  # raw cosine against the profile that was scored
    score: float  # on the space's own decision scale (compare with its threshold)
    pair_type: str  # PAIR_TELEPHONE, PAIR_NATIVE or PAIR_WIDEBAND
    profile: str  # PROFILE_TELEPHONE or PROFILE_NORMAL


def usable_views(
    scoring: Mapping[str, SpaceScoring],
    enabled: bool,
    gallery: VectorStore,
    normalizer: AsNorm | None,
) -> tuple[dict[str, NarrowbandView], dict[str, str]]:
    """The views (``resolve_views``) this gallery can serve — it holds their derived space
    (``service.bootstrap`` adds it) and AS-norm runs — with each normaliser sharing the space's
    cohort; and per space a sentence: ``on: …`` or why not."""
    views, status = resolve_views(scoring, enabled)
    for space, view in list(views.items()):
        if view.derived not in gallery.dims or normalizer is None:
            del views[space]
            status[space] = "no telephone-band index in this gallery"
            continue
        normalizer.share_cohort(view.derived, space)
        status[space] = f"on: narrowband probes search {view.derived}"
    return views, status


def strict_bars(
    view: NarrowbandView, decision: Decision, speech_s: float | None, snr_db: float | None
) -> RaisedBars | None:
    """Per pair type, the bars a narrowband probe of a quality class is held to, or None when
    every type keeps its pooled t(N) (the probe is in no class, its class has no stricter bar
    for any of its pair types, or the decision has no strict tails)."""
    strict, fpir, n = decision.strict, decision.fpir_target, decision.gallery_size
    if strict is None or fpir is None or n is None:
        return None
    rule = strict.rule_for(speech_s, snr_db)
    if rule is None:
        return None
    bars = view.bars(rule, fpir, n)
    return RaisedBars(rule.name, bars) if any(bar.strict for bar in bars.values()) else None


class NarrowbandSearch:
    def __init__(
        self,
        gallery: VectorStore,
        store: SpeakerStore,
        policy: DecisionPolicy,
        normalizer: AsNorm | None,
    ) -> None:
        self.gallery = gallery
        self.store = store
        self.policy = policy
        self.normalizer = normalizer

    def _pool(
        self, normalizer: AsNorm, space: str, vector: np.ndarray, depth: int, pool: int
    ) -> tuple[list[Hit], list[float], dict[int, SpeakerBrief]] | None:
        """The first ``pool`` hits of ``space`` with their AS-norm scores; None when some
        candidate has no statistics (then nothing of this search is comparable)."""
        deep, briefs = self.gallery.search_briefs(space, vector, max(depth, pool), describe=pool)
        hits = [hit for hit in deep[:pool] if hit.speaker_id in briefs]
        normed = normalizer.normalise(
            space, vector, [h.speaker_id for h in hits], [h.score for h in hits], probe_hits=deep
        )
        if any(score is None for score in normed):
            return None
        return hits, [float(s) for s in normed if s is not None], briefs

    def search(
        self,
        view: NarrowbandView,
        vector: np.ndarray,
        top_n: int,
        pool: int,
        speech_s: float | None = None,
        snr_db: float | None = None,
    ) -> tuple[list[Ranked], Decision, int] | None:
        """Candidates best first (at most ``top_n``), the decision at the normal gallery's
        size, and that size; None when the view cannot decide this search (see the module
        docstring). ``speech_s``/``snr_db``: the probe's measured quality; where its quality
        class has a telephone-band tail (long and clean) those pairs are held to it
        (:func:`strict_bars`)."""
        normalizer = self.normalizer
        size = self.gallery.size(view.space)
        decision = self.policy.decision(view.space, size)
        if (
            decision.source != SOURCE_SHIPPED
            or normalizer is None
            or not normalizer.enabled(view.derived)
            or not normalizer.enabled(view.space)
        ):
            return None
        depth = max(top_n, normalizer.top_k + 1)
        pool = max(top_n, pool)
        found = self._pool(normalizer, view.derived, vector, depth, pool)
        if found is None:
            return None
        hits, scores, briefs = found
        raised = strict_bars(view, decision, speech_s, snr_db)
        bars = raised.bars if raised is not None else None
        native = self.store.natively_narrowband([h.speaker_id for h in hits], TELEPHONE_RATE)
        ranked: dict[int, Ranked] = {}
        for hit, score in zip(hits, scores, strict=True):
            pair = PAIR_NATIVE if hit.speaker_id in native else PAIR_TELEPHONE
            ranked[hit.speaker_id] = Ranked(
                briefs[hit.speaker_id],
                hit.score,
                view.to_common(pair, score, bars),
                pair,
                PROFILE_TELEPHONE if pair == PAIR_TELEPHONE else PROFILE_NORMAL,
            )
        if self.gallery.size(view.derived) < size:
            # Some searchable speakers have no telephone-band profile: today's scoring for them.
            found = self._pool(normalizer, view.space, vector, depth, pool)
            if found is None:
                return None
            hits, scores, briefs = found
            ids = np.asarray([h.speaker_id for h in hits], dtype=np.int64)
            has_view = ~np.isnan(self.gallery.vectors(view.derived, ids)).any(axis=1)
            for hit, score, covered in zip(hits, scores, has_view, strict=True):
                if not covered and hit.speaker_id not in ranked:
                    ranked[hit.speaker_id] = Ranked(
                        briefs[hit.speaker_id], hit.score, score, PAIR_WIDEBAND, PROFILE_NORMAL
                    )
        best = sorted(ranked.values(), key=lambda r: -r.score)[:top_n]
        # Say so only when some candidate answered was held to a raised bar.
        if raised is not None and any(raised.bars[r.pair_type].strict for r in best):
            decision = dataclasses.replace(decision, quality=raised.quality)
        return best, decision, size
