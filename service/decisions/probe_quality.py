"""Stricter impostor tails for probe quality classes (issue 12, research Q15–Q19).

The shipped tail (``service.decisions.cohort``) pools every calibration probe, and most of those
are words of a second or less. An impostor's AS-norm score runs higher when the probe is longer —
there is more of the voice to resemble — so one pooled tail is too light for exactly the probes
users trust most: on the held-out read speech of issue 12, clean probes against a same-corpus
gallery were matched to a stranger 6.2 % of the time at an FPIR* of 3 %.

The calibration corpus says where the tail changes. Net speech alone is not the lever: the 95th
percentile of type-A impostor scores is U-shaped in it (−1.25 under 0.6 s, −1.43 around 1.2 s,
−0.99 above 4.4 s; ``bench/quality_tails.py``), so a slope on duration moves nothing. Net speech
*and* estimated SNR do (research ``q19_snrbins.py``; CAL with its same-corpus distractors in the
gallery; t(6) at FPIR* 3 % is 1.41 pooled): ≥ 2 s probes 2.2–2.4 at ≥ 20 dB and 1.69–1.83
below; 1–2 s probes 1.57–1.75 at ≥ 15 dB but 0.86–1.14 below; under 1 s 0.68–1.06 at every SNR.
So three disjoint classes have their own tails for wideband probes (pair type A):
``long_clean`` (≥ 2 s, ≥ 20 dB: u −0.36), ``long_noisy`` (≥ 2 s, < 20 dB: u −0.83) and
``medium_clean`` (1–2 s, ≥ 15 dB: u −0.91), against u −1.19 pooled. For a probe of a class the
threshold is the *higher* of the pooled t(N) and its class's t(N): never lower than before, so
sub-second and noisy short probes — where FNIR is already the model's limit — keep their bar
exactly, and an SNR misread costs at most the pooled bar.

Measured effect (TEST split, never fitted on; ``bench/results/quality_tails.md``): read speech
against a same-corpus gallery (N = 134) clean FPIR 6.2 → 2.1 %, MP3 4.2 → 2.1 % at the cost of
one MP3 probe (FNIR 1.6 → 3.3 %), short excerpts 2.1 → 0.0 %; the noisy class costs one read
probe each in babble and white noise at 5 dB (FNIR +1.6 points), where FPIR was 0 already.
Part of the long, clean gap to the pooled tail is the same-corpus gallery: without the
distractors that class's tail is u −0.91 against −1.25 for every wideband pair. A narrowband
probe (source ≤ 8 kHz) never gets a type-A strict tail (they were fitted on wideband probes); a
long, clean one's telephone-band pairs (type B) are held to their own, also heavier tail
(u 0.78, β 1.27 vs 1.10: ``service.search.narrowband``; long, noisy phone probes are too few on
CAL to fit one, medium ones' B tail is lighter than pooled). That costs read-speech
telephone-band FNIR on the research TEST split (3.3 → 9.8 % at N = 69, where FPIR was 0 already)
and buys it where the gallery holds same-corpus voices: end to end, telephone-band FPIR 7.1 →
2.2 % (FNIR 6.9 → 9.0 %), dev-speech 20 → 10 % (FNIR 0).

The shipped class tails apply only where the shipped rule is in force (shipped cohort, the
checkpoint they were fitted with). A calibration of one's own (``voicesearch calibrate``) fits
the same classes again on its manifest where it has enough impostor scores for them
(``service.evaluation.quality_fit``) and carries those; an operator's threshold is used as it
is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from service.decisions.openset import TailFit

#: The names answers carry (``threshold_quality``) when a class's strict tail was applied.
LONG_CLEAN = "long_clean"  # >= 2 s of net speech at >= 20 dB
LONG_NOISY = "long_noisy"  # >= 2 s at < 20 dB
MEDIUM_CLEAN = "medium_clean"  # 1-2 s at >= 15 dB


@dataclass(frozen=True)
class StrictTailRule:
    """One quality class of probes and its strict tail per pair type (``service.decisions.
    bandwidth``): ``A`` for a wideband probe against the normal profiles, ``B`` for a narrowband
    probe against telephone-band profiles; a type without one keeps its pooled tail. Bounds are
    half-open, ``[min, max)``; None leaves that side open."""

    name: str
    min_speech_s: float  # net speech the probe needs (VAD)
    min_snr_db: float | None  # estimated SNR it needs (``service.pipeline.quality``)
    tails: Mapping[str, TailFit]
    max_speech_s: float | None = None
    max_snr_db: float | None = None

    def applies(self, speech_s: float | None, snr_db: float | None) -> bool:
        """True for a probe measured inside this class; unknown quality never applies."""
        if speech_s is None or snr_db is None:
            return False
        return (
            speech_s >= self.min_speech_s
            and (self.max_speech_s is None or speech_s < self.max_speech_s)
            and (self.min_snr_db is None or snr_db >= self.min_snr_db)
            and (self.max_snr_db is None or snr_db < self.max_snr_db)
        )

    def describe(self) -> str:
        """The class in words, e.g. ``>= 2 s at >= 20 dB`` (for doctor and logs)."""
        speech = f">= {self.min_speech_s:g} s"
        if self.max_speech_s is not None:
            speech = f"{self.min_speech_s:g}-{self.max_speech_s:g} s"
        snr = []
        if self.min_snr_db is not None:
            snr.append(f">= {self.min_snr_db:g} dB")
        if self.max_snr_db is not None:
            snr.append(f"< {self.max_snr_db:g} dB")
        return f"{speech} at {' and '.join(snr) or 'any SNR'}"

    def tail_in_force(self, pair_type: str, pooled: TailFit, fpir: float, n: int) -> TailFit:
        """The tail this class's ``pair_type`` pairs are decided on at gallery size ``n``: the
        strict one where it gives the higher t(N), else ``pooled`` itself."""
        strict = self.tails.get(pair_type)
        if strict is None or strict.threshold(fpir, n) <= pooled.threshold(fpir, n):
            return pooled
        return strict

    def threshold(self, pair_type: str, pooled: TailFit, fpir: float, n: int) -> float:
        """The higher of the pooled and the strict t(N) for ``pair_type``."""
        return self.tail_in_force(pair_type, pooled, fpir, n).threshold(fpir, n)


@dataclass(frozen=True)
class QualityTails:
    """A rule's probe quality classes (the shipped ones, or those a calibration fitted),
    disjoint: a probe belongs to one or to none (then every pair keeps its pooled tail)."""

    rules: tuple[StrictTailRule, ...]

    def __post_init__(self) -> None:
        for i, a in enumerate(self.rules):
            for b in self.rules[i + 1 :]:
                if _overlap(a, b):
                    raise ValueError(f"quality classes {a.name} and {b.name} overlap")

    def rule_for(self, speech_s: float | None, snr_db: float | None) -> StrictTailRule | None:
        """The class a probe of ``speech_s`` seconds of net speech at ``snr_db`` belongs to."""
        return next((r for r in self.rules if r.applies(speech_s, snr_db)), None)

    def __iter__(self) -> Iterator[StrictTailRule]:
        return iter(self.rules)


def _bound(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    return None if value is None else float(value)


def to_meta(classes: QualityTails) -> dict[str, dict[str, Any]]:
    """``classes`` in the form :func:`load_rules` reads (the shipped cohort's ``quality_tails``;
    a stored calibration's ``details["quality_tails"]``)."""
    return {
        rule.name: {
            "min_speech_s": rule.min_speech_s,
            "max_speech_s": rule.max_speech_s,
            "min_snr_db": rule.min_snr_db,
            "max_snr_db": rule.max_snr_db,
            "tails": {pair: tail.to_dict() for pair, tail in rule.tails.items()},
        }
        for rule in classes
    }


def load_rules(meta: Mapping[str, Any] | None) -> QualityTails | None:
    """The quality classes of a shipped cohort's metadata (``quality_tails``: name -> class),
    if it has any. Refuses overlapping classes: a probe must have one bar, not two."""
    rules = tuple(
        StrictTailRule(
            name,
            float(data["min_speech_s"]),
            _bound(data, "min_snr_db"),
            {pair: TailFit.from_dict(tail) for pair, tail in data["tails"].items()},
            max_speech_s=_bound(data, "max_speech_s"),
            max_snr_db=_bound(data, "max_snr_db"),
        )
        for name, data in (meta or {}).items()
        if isinstance(data, Mapping)
    )
    return QualityTails(rules) if rules else None


def _overlap(a: StrictTailRule, b: StrictTailRule) -> bool:
    def meets(lo1: float | None, hi1: float | None, lo2: float | None, hi2: float | None) -> bool:
        lo = max(x for x in (lo1, lo2, float("-inf")) if x is not None)
        hi = min(x for x in (hi1, hi2, float("inf")) if x is not None)
        return lo < hi

    return meets(a.min_speech_s, a.max_speech_s, b.min_speech_s, b.max_speech_s) and meets(
        a.min_snr_db, a.max_snr_db, b.min_snr_db, b.max_snr_db
    )
