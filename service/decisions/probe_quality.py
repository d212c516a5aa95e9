"""A stricter impostor tail for long, clean probes (issue 12, research Q15–Q18).

The shipped tail (``service.decisions.cohort``) pools every calibration probe, and most of those
are words of a second or less. An impostor's AS-norm score runs higher when the probe is a long,
clean sentence — there is more of the voice to resemble — so one pooled tail is too light for
exactly the probes users trust most: on the held-out read speech of issue 12, clean probes
against a same-corpus gallery were matched to a stranger 6.2 % of the time at an FPIR* of 3 %.

The calibration corpus says where the tail changes. Net speech alone is not the lever: the 95th
percentile of type-A impostor scores is U-shaped in it (−1.25 under 0.6 s, −1.43 around 1.2 s,
−0.99 above 4.4 s; ``bench/quality_tails.py``), so a slope on duration moves nothing. Long *and*
clean probes (≥ 2 s of net speech at an estimated SNR ≥ 20 dB) do have a heavier tail: for
wideband probes (pair type A) u −0.36 vs −1.19 pooled (CAL with its same-corpus distractors in
the gallery). For such a probe the threshold is the *higher* of the pooled t(N) and the strict
tail's t(N): never lower than before, so short and noisy probes — where FNIR is already the
model's limit — keep their bar exactly.

Measured effect (TEST split, never fitted on; ``bench/results/quality_tails.md``): read speech
against a same-corpus gallery (N = 134) clean FPIR 6.2 → 2.1 %, MP3 4.2 → 2.1 % at the cost of
one MP3 probe (FNIR 1.6 → 3.3 %); a few more cells gained FPIR (the results
file lists them). Part of the gap to the pooled tail is the same-corpus gallery: without the
distractors the long-clean tail is u −0.91 against −1.25 for every wideband pair. A narrowband
probe (source ≤ 8 kHz) never gets type A's strict tail (it was fitted on wideband probes); a
long, clean one's telephone-band pairs (type B) are held to their own, also heavier tail
(u 0.78, β 1.27 vs 1.10: ``service.search.narrowband``). That costs read-speech telephone-band
FNIR on the research TEST split (3.3 → 9.8 % at N = 69, where FPIR was 0 already) and buys it
where the gallery holds same-corpus voices: end to end, telephone-band FPIR 7.1 → 2.2 % (FNIR
6.9 → 9.0 %), dev-speech 20 → 10 % (FNIR 0).

Only where the shipped tails are in force (shipped cohort, the checkpoint they were fitted
with): a calibration of one's own or an operator's threshold is used as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.decisions.openset import TailFit

#: The name answers carry (``threshold_quality``) when the strict tail was applied.
LONG_CLEAN = "long_clean"


@dataclass(frozen=True)
class StrictTailRule:
    """Which probes get the strict tail, and that tail per pair type (``service.decisions.
    bandwidth``): ``A`` for a wideband probe against the normal profiles, ``B`` for a narrowband
    probe against telephone-band profiles; a type without one keeps its pooled tail."""

    name: str
    min_speech_s: float  # net speech the probe needs (VAD)
    min_snr_db: float  # estimated SNR it needs (``service.pipeline.quality``)
    tails: Mapping[str, TailFit]

    def applies(self, speech_s: float | None, snr_db: float | None) -> bool:
        """True for a probe measured long and clean enough; unknown quality never applies."""
        if speech_s is None or snr_db is None:
            return False
        return speech_s >= self.min_speech_s and snr_db >= self.min_snr_db

    def tail_in_force(self, pair_type: str, pooled: TailFit, fpir: float, n: int) -> TailFit:
        """The tail a long, clean probe's ``pair_type`` pairs are decided on at gallery size
        ``n``: the strict one where it gives the higher t(N), else ``pooled`` itself."""
        strict = self.tails.get(pair_type)
        if strict is None or strict.threshold(fpir, n) <= pooled.threshold(fpir, n):
            return pooled
        return strict

    def threshold(self, pair_type: str, pooled: TailFit, fpir: float, n: int) -> float:
        """The higher of the pooled and the strict t(N) for ``pair_type``."""
        return self.tail_in_force(pair_type, pooled, fpir, n).threshold(fpir, n)


def load_rule(meta: Mapping[str, Any] | None) -> StrictTailRule | None:
    """The long-clean rule of a shipped cohort's metadata (``quality_tails``), if it has one."""
    data = (meta or {}).get(LONG_CLEAN)
    if not isinstance(data, Mapping):
        return None
    return StrictTailRule(
        LONG_CLEAN,
        float(data["min_speech_s"]),
        float(data["min_snr_db"]),
        {pair: TailFit.from_dict(tail) for pair, tail in data["tails"].items()},
    )
