"""Open-set identification: the threshold that keeps FPIR at its target as the gallery grows.

``decision: match`` is about the *best* of N enrolled speakers, so what a user needs bounded is
the false-positive identification rate (FPIR: share of unenrolled probes whose best score clears
the threshold), not a pair FAR. If impostor pair scores were independent, an unenrolled probe
is matched with probability ``1 − (1 − P(S ≥ t))^N``. Setting that to FPIR* gives the per-pair
exceedance ``p(N) = 1 − (1 − FPIR*)^(1/N)`` the threshold must reach.

The upper tail of the impostor scores is modelled as exponential above their ``q``-quantile ``u``
(peaks over threshold, as NIST-style 1:N evaluations extrapolate): ``P(S ≥ t) = m·exp(−(t − u)/β)``
for ``t ≥ u``, where ``m = 1 − q`` is the tail mass (0.05 for q = 0.95) and ``β`` the mean excess
over ``u``. Hence

    t(N) = u + β · ln(m / p(N))

which grows like ``β·ln N``. A Gaussian fit underestimates this tail (measured: 6–16 % FPIR for a
5 % design at 69 speakers); the exponential tail held it (issue 12, RESULTS.md Q5).

FNIR (share of enrolled probes not returned as the right match, wrong-speaker accepts included)
is measured, never modelled: :func:`open_set_rates`.

Pure NumPy, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Quantile of the impostor scores above which the tail is fitted (tail mass 1 − q).
DEFAULT_TAIL_QUANTILE = 0.95


@dataclass(frozen=True)
class TailFit:
    """Exponential upper tail of impostor pair scores: ``P(S ≥ t) = mass·exp(−(t − u)/beta)``."""

    u: float  # the fitted quantile of the impostor scores
    beta: float  # mean excess of the scores above u
    mass: float  # share of impostor scores above u (1 − quantile)
    n_impostor: int = 0  # how many impostor scores it was fitted on (0: not recorded)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.u) and self.beta > 0 and 0 < self.mass < 1):
            raise ValueError(f"invalid tail: u={self.u}, beta={self.beta}, mass={self.mass}")

    def exceedance(self, t: float) -> float:
        """Modelled P(one impostor score ≥ t) for ``t ≥ u`` (capped at the tail mass below)."""
        return self.mass * math.exp(-max(t - self.u, 0.0) / self.beta)

    def threshold(self, fpir: float, n: int) -> float:
        """t(N): the threshold at which the best of ``n`` impostor scores clears with
        probability ``fpir``. ``n`` below 1 (an empty gallery) is treated as 1."""
        return self.u + self.beta * math.log(self.mass / per_pair_rate(fpir, n))

    def predicted_fpir(self, t: float, n: int) -> float:
        """Modelled FPIR of threshold ``t`` at gallery size ``n``: 1 − (1 − P(S ≥ t))^n."""
        return float(-math.expm1(max(n, 1) * math.log1p(-self.exceedance(t))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TailFit:
        return cls(
            float(data["u"]),
            float(data["beta"]),
            float(data["mass"]),
            int(data.get("n_impostor", 0)),
        )


def per_pair_rate(fpir: float, n: int) -> float:
    """``p(N) = 1 − (1 − FPIR*)^(1/N)``, computed without cancellation for large N."""
    if not 0 < fpir < 1:
        raise ValueError(f"FPIR target must be in (0, 1), got {fpir}")
    return float(-math.expm1(math.log1p(-fpir) / max(int(n), 1)))


#: Fewest impostor scores above u a tail is fitted on.
MIN_EXCEEDANCES = 10


def fit_tail(impostor: Any, quantile: float = DEFAULT_TAIL_QUANTILE) -> TailFit:
    """Exponential tail of ``impostor`` scores above their ``quantile`` (u = quantile, β = mean
    excess, tail mass = 1 − quantile). With fewer than ``MIN_EXCEEDANCES / (1 − quantile)``
    scores (200 at 0.95) the quantile is lowered so that ``MIN_EXCEEDANCES`` scores lie above u
    (never below the median): a small calibration set still gets a tail, with its mass stated."""
    scores = np.asarray(impostor, dtype=np.float64).reshape(-1)
    scores = scores[np.isfinite(scores)]
    if not 0 < quantile < 1:
        raise ValueError(f"tail quantile must be in (0, 1), got {quantile}")
    if scores.size < 2 * MIN_EXCEEDANCES:
        raise ValueError(
            f"need at least {2 * MIN_EXCEEDANCES} impostor scores to fit the tail of their "
            f"distribution; got {scores.size}"
        )
    quantile = min(quantile, 1.0 - MIN_EXCEEDANCES / scores.size)
    u = float(np.quantile(scores, quantile))
    excess = scores[scores > u] - u
    if excess.size == 0 or float(excess.mean()) <= 0:
        raise ValueError("impostor scores have no spread above their upper quantile")
    mass = float(excess.size / scores.size)  # the share actually above u (ties at u excluded)
    return TailFit(u, float(excess.mean()), mass, int(scores.size))


@dataclass(frozen=True)
class OpenSetRates:
    fpir: float | None  # None without unenrolled probes
    fnir: float | None  # None without enrolled probes
    n_unenrolled: int
    n_enrolled: int


def open_set_rates(
    best: Any, enrolled: Any, top1_correct: Any, threshold: float, decided: Any = None
) -> OpenSetRates:
    """Measured FPIR/FNIR at ``threshold``. Per probe: its best score, whether its speaker is
    enrolled, whether the best candidate is its own speaker, and whether it was decided at all
    (an undecided probe is never a match)."""
    best = np.asarray(best, dtype=np.float64)
    enrolled = np.asarray(enrolled, dtype=bool)
    correct = np.asarray(top1_correct, dtype=bool)
    ok = np.ones(best.shape, bool) if decided is None else np.asarray(decided, dtype=bool)
    accepted = (best >= threshold) & ok
    n_u, n_e = int((~enrolled).sum()), int(enrolled.sum())
    fpir = float(accepted[~enrolled].mean()) if n_u else None
    fnir = float(1.0 - (accepted & correct)[enrolled].mean()) if n_e else None
    return OpenSetRates(fpir, fnir, n_u, n_e)
