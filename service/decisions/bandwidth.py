"""Telephone-band profiles: which spaces have a narrowband view, and how its pairs are decided.

A probe from a phone call (source ≤ 8 kHz) scores poorly against a profile enrolled from a good
microphone: the model sees the missing band as a different voice. Where it is fitted, each
enrolled clip is therefore also passed through the telephone chain (``service.pipeline.
telephone``) and embedded into a *derived space*, ``<space>-nb``: the speaker's telephone-band
profile. Clips enrolled at ≤ 8 kHz go into it unchanged (they are telephone band already). It is
an ordinary space for storage, the change log, the index, snapshots, rebuild and verify.

A narrowband probe then meets three kinds of pair, each with its own impostor tail
(``cohorts/ecapa-voxceleb.json``, ``pairtype_tails``, fitted on the research CAL split with the
shipped cohort, never on TEST):

* ``A``: a wideband probe against the normal profile — the space's own rule, unchanged;
* ``B``: a narrowband probe against the telephone-band profile of a wideband-enrolled speaker;
* ``C``: a narrowband probe against the profile of a speaker enrolled only from ≤ 8 kHz audio;
* ``A`` also stands for a narrowband probe against a speaker with no telephone-band profile
  (enrolled before the upgrade; no audio is stored to build one): today's rule, its own tail.

Scores of different types are put on one scale before ranking: each pair's standardised
exceedance ``z = (s − u_type) / β_type`` is mapped onto the space's own tail,
``s' = u_A + β_A·z``. Since t(N) = u + β·ln(m / p(N)) for every tail (same tail mass m), ``s' ≥
t_A(N)`` ⇔ ``z ≥ ln(m / p(N))``: each type is decided at the same FPIR target and N by its own
tail, and the answer's threshold stays the one a wideband probe gets.

Pure data and arithmetic; the search itself is ``service.search.narrowband``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from service.decisions.cohort import (
    COHORT_SHIPPED,
    SHIPPED,
    SpaceScoring,
    resolve_scoring,
    shipped_cohort,
)
from service.decisions.openset import TailFit
from service.decisions.probe_quality import StrictTailRule

if TYPE_CHECKING:
    from service.core.settings import Settings
from service.pipeline.telephone import CHAIN_VERSION, TELEPHONE_RATE

PAIR_WIDEBAND = "A"  # wideband probe × normal profile (or no telephone-band profile exists)
PAIR_TELEPHONE = "B"  # narrowband probe × telephone-band profile of a wideband enrollment
PAIR_NATIVE = "C"  # narrowband probe × profile enrolled from ≤ 8 kHz audio
NARROWBAND_SUFFIX = "-nb"


def narrowband_space(space: str) -> str:
    """The derived space holding ``space``'s telephone-band profiles."""
    return f"{space}{NARROWBAND_SUFFIX}"


def is_narrowband(source_sample_rate: int | None) -> bool:
    """A clip whose source carries nothing above 4 kHz (≤ 8 kHz sampling)."""
    return source_sample_rate is not None and 0 < source_sample_rate <= TELEPHONE_RATE


def narrowband_identity(identity: str) -> str:
    """Model identity of a telephone-band embedding: the encoder's plus the chain's version, so
    a changed chain (or model) makes old telephone-band embeddings stale, never mixed."""
    return f"{identity}+{CHAIN_VERSION}"


@dataclass(frozen=True)
class Bar:
    """What one pair type's scores are decided against for one probe: the threshold, the β
    of the tail it comes from, and whether that is the strict tail of the probe's quality
    class (``service.decisions.probe_quality``)."""

    threshold: float
    beta: float
    strict: bool = False


@dataclass(frozen=True)
class NarrowbandView:
    """One space's telephone-band view and the tails its narrowband probes are decided on."""

    space: str  # the encoder space, e.g. voxceleb
    derived: str  # its telephone-band profiles, e.g. voxceleb-nb
    tails: Mapping[str, TailFit]  # pair type -> tail, on the space's decision score

    def to_common(
        self, pair_type: str, score: float, bars: Mapping[str, Bar] | None = None
    ) -> float:
        """``score`` of a ``pair_type`` pair on the type-A scale (see the module docstring).

        ``bars``: every pair type's bar for this probe, where they are not all their pooled
        t(N) (a probe of a quality class with a strict tail: :meth:`bars`); the map then sends
        each type's own threshold onto type A's, scaled by the β of the tail in force
        (exceedances stay comparable)."""
        if pair_type == PAIR_WIDEBAND:
            return score
        own, common = self.tails[pair_type], self.tails[PAIR_WIDEBAND]
        if bars is None:
            return common.u + common.beta * (score - own.u) / own.beta
        bar, base = bars[pair_type], bars[PAIR_WIDEBAND]
        return base.threshold + base.beta * (score - bar.threshold) / bar.beta

    def bars(self, strict: StrictTailRule, fpir: float, n: int) -> dict[str, Bar]:
        """Every pair type's bar for a narrowband probe of the quality class ``strict`` at
        gallery size ``n``: the class's strict tail where it has one for the type and that gives
        the higher t(N), else the pooled tail. Type A stays pooled: the strict tails of type A
        were fitted on wideband probes (``service.decisions.probe_quality``)."""
        out: dict[str, Bar] = {}
        for pair, pooled in self.tails.items():
            chosen = (
                pooled if pair == PAIR_WIDEBAND else strict.tail_in_force(pair, pooled, fpir, n)
            )
            out[pair] = Bar(chosen.threshold(fpir, n), chosen.beta, chosen is not pooled)
        return out


class LoadedEncoder(Protocol):
    """What scoring needs of a loaded encoder: which checkpoint, how many dimensions."""

    @property
    def identity(self) -> str: ...

    @property
    def dim(self) -> int: ...


def resolve_space_scoring(
    settings: Settings, encoders: Mapping[str, LoadedEncoder]
) -> tuple[dict[str, SpaceScoring], dict[str, NarrowbandView], dict[str, str]]:
    """Per loaded space: its scoring (cosine or AS-norm, which cohort), its narrowband view
    where fitted, and why not elsewhere: what start-up, ``doctor`` and ``calibrate`` all ask.
    A bad operator cohort file raises (OSError / ValueError) with its reason."""
    identities = {space: enc.identity for space, enc in encoders.items()}
    dims = {space: enc.dim for space, enc in encoders.items()}
    scoring = resolve_scoring(settings.asnorm(), identities, dims)
    views, why_not = resolve_views(scoring, settings.narrowband_profiles)
    return scoring, views, why_not


def resolve_views(
    scoring: Mapping[str, SpaceScoring], enabled: bool
) -> tuple[dict[str, NarrowbandView], dict[str, str]]:
    """The narrowband view of every space where it is fitted, and for every space why not.

    Fitted means: the space decides on AS-norm with the shipped cohort (the checkpoint the
    tails were measured with) and that cohort ships pair-type tails. An operator cohort, a
    gallery cohort or raw cosine would put the B/C tails on a score they were not fitted on."""
    views: dict[str, NarrowbandView] = {}
    why_not: dict[str, str] = {}
    for space, chosen in scoring.items():
        if not enabled:
            why_not[space] = "turned off (VOICESEARCH_NARROWBAND_PROFILES=off)"
            continue
        if chosen.cohort_origin != COHORT_SHIPPED or space not in SHIPPED:
            why_not[space] = (
                "needs the shipped AS-norm cohort (its pair-type tails were fitted with it)"
            )
            continue
        meta = shipped_cohort(SHIPPED[space]).meta.get("pairtype_tails")
        if not meta:
            why_not[space] = "the shipped cohort has no pair-type tails"
            continue
        tails = {
            PAIR_WIDEBAND: chosen.default_tail(chosen.score_type),
            PAIR_TELEPHONE: TailFit.from_dict(meta[PAIR_TELEPHONE]),
            PAIR_NATIVE: TailFit.from_dict(meta[PAIR_NATIVE]),
        }
        views[space] = NarrowbandView(space, narrowband_space(space), tails)
    return views, why_not
