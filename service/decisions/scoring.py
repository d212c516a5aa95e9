"""The math of speaker-verification evaluation and score calibration (NumPy only).

(Longer than the ~400 lines a module here usually gets, on purpose: it is one body of pure
functions that share their input checks — ``_scores``, ``_pair``, ``_step_up`` — and one
accept-if-``>=`` convention; split by topic, those helpers would have to cross modules.)

Everything here is a pure function of score arrays: no torch, no I/O. Conventions:

* A *genuine* (target) score compares two recordings of the same speaker, an *impostor*
  (non-target) score two different speakers. Higher means "more likely the same speaker".
* A trial is **accepted when score >= threshold** (ties accept), so
  ``FAR(t) = #{impostor >= t} / N_imp`` and ``FRR(t) = #{genuine < t} / N_gen``.
* All counting is done in float64. Inputs are never modified. Where a function has to return a
  threshold "just above" a score it steps by one ULP *in the input's own precision*
  (float32 scores → a float32-representable threshold), so the threshold behaves the same
  whether the caller later compares in float32 or float64.

Methods, by name:

* EER: the point where the FAR and FRR curves cross, linearly interpolated between the two
  empirical operating points that bracket the crossing (no ROC convex hull, unlike BOSARIS'
  ROCCH-EER, so it is the "plain" EER most papers and toolkits report).
* Linear logistic calibration: prior-weighted logistic regression, as in Brümmer's FoCal /
  BOSARIS ``train_binary_classifier``; quality measured by Cllr (Brümmer & du Preez, 2006).
* AS-norm: adaptive symmetric score normalisation (Cumani et al., 2011; Matějka et al., 2017,
  "Analysis of score normalization in multilingual speaker recognition").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

# ------------------------------------------------------------------------------------------------
# Input handling
# ------------------------------------------------------------------------------------------------


def _scores(values: Any, name: str) -> tuple[np.ndarray, np.dtype]:
    """A non-empty, finite, 1-D float64 copy of ``values`` and the float dtype they came in.

    The original precision is kept only to step thresholds by one ULP in it (see module doc).
    """
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    dtype = np.result_type(arr.dtype, np.float32) if arr.dtype.kind == "f" else np.float64
    out = arr.astype(np.float64).ravel()
    if out.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return out, np.dtype(dtype)


def _pair(genuine: Any, impostor: Any) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    g, g_dtype = _scores(genuine, "genuine")
    i, i_dtype = _scores(impostor, "impostor")
    return np.sort(g), np.sort(i), np.result_type(g_dtype, i_dtype)


def _step_up(value: float, dtype: np.dtype) -> float:
    """The smallest number of ``dtype`` strictly greater than ``value`` (as a Python float)."""
    return float(np.nextafter(dtype.type(value), dtype.type(np.inf)))


def _rates(
    g_sorted: np.ndarray, i_sorted: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) at each threshold, from sorted scores, by binary search: O((n + m) log n)."""
    # side="left" counts scores strictly below t, so a score equal to t counts as accepted.
    frr = np.searchsorted(g_sorted, thresholds, side="left") / g_sorted.size
    far = (i_sorted.size - np.searchsorted(i_sorted, thresholds, side="left")) / i_sorted.size
    return far, frr


# ------------------------------------------------------------------------------------------------
# Error rates, EER, DET
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorRates:
    """One operating point. Accept means ``score >= threshold``."""

    threshold: float
    far: float  # false-accept rate: fraction of impostor scores >= threshold
    frr: float  # false-reject rate: fraction of genuine scores < threshold


def rates_at(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> ErrorRates:
    """FAR and FRR at ``threshold`` (a score equal to the threshold is accepted)."""
    g, _ = _scores(genuine, "genuine")
    i, _ = _scores(impostor, "impostor")
    t = float(threshold)
    # Compare in float64: a Python float against a float32 array would otherwise be rounded to
    # float32 first (NumPy 2 / NEP 50) and could flip ties.
    return ErrorRates(threshold=t, far=float(np.mean(i >= t)), frr=float(np.mean(g < t)))


def det_curve(
    genuine: np.ndarray, impostor: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct empirical operating point: ``(far, frr, thresholds)``, all float64.

    ``thresholds`` are the distinct scores in ascending order followed by one value just above
    the highest score, so the curve runs from (FAR=1, FRR=0) to (FAR=0, FRR=1). Along it ``far``
    is non-increasing and ``frr`` non-decreasing (a step curve: consecutive points may share one
    coordinate).
    """
    g, i, dtype = _pair(genuine, impostor)
    thresholds = _thresholds(g, i, dtype)
    far, frr = _rates(g, i, thresholds)
    return far, frr, thresholds


def _thresholds(g_sorted: np.ndarray, i_sorted: np.ndarray, dtype: np.dtype) -> np.ndarray:
    distinct = np.unique(np.concatenate([g_sorted, i_sorted]))
    return np.append(distinct, _step_up(distinct[-1], dtype))


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold at which it occurs.

    The empirical FAR/FRR curves are step functions that need not meet exactly; the EER is
    where the straight segment between the last operating point with FRR < FAR and the first
    one with FRR >= FAR crosses the diagonal FAR = FRR. The threshold is interpolated with the
    same weight. When some operating point has FAR == FRR exactly, that point and its (real)
    threshold are returned — e.g. perfectly separated scores give ``(0.0, min(genuine))``.
    """
    far, frr, thresholds = det_curve(genuine, impostor)
    rate, weight, j = _crossing(far, frr)
    if weight == 1.0:
        return rate, float(thresholds[j])
    t0, t1 = float(thresholds[j - 1]), float(thresholds[j])
    return rate, t0 + weight * (t1 - t0)


def _crossing(far: np.ndarray, frr: np.ndarray) -> tuple[float, float, int]:
    """Where a (far non-increasing, frr non-decreasing) curve crosses FAR == FRR.

    Returns ``(eer, w, j)``: the crossing lies at ``(1 - w) * point[j-1] + w * point[j]``,
    with ``w == 1.0`` meaning point ``j`` itself lies on the diagonal.
    """
    diff = frr - far  # non-decreasing along the curve
    j = int(np.argmax(diff >= 0))
    if diff[j] < 0:  # never reaches the diagonal (cannot happen for a full curve)
        j = diff.size - 1
    if diff[j] == 0 or j == 0:
        return float(far[j]), 1.0, j
    w = float(-diff[j - 1] / (diff[j] - diff[j - 1]))
    rate = float(far[j - 1] + w * (far[j] - far[j - 1]))
    return rate, w, j


def eer_from_curve(far: np.ndarray, frr: np.ndarray) -> float:
    """EER of a curve given only as ``(far, frr)`` points (same interpolation as :func:`eer`).

    Used by the DET plot, which receives curves, not scores. Points may come in any order; they
    are put in curve order (FAR descending, then FRR ascending) first.
    """
    far = np.asarray(far, dtype=np.float64).ravel()
    frr = np.asarray(frr, dtype=np.float64).ravel()
    if far.shape != frr.shape or far.size == 0:
        raise ValueError("far and frr must be non-empty and of equal length")
    order = np.lexsort((frr, -far))
    return _crossing(far[order], frr[order])[0]


def threshold_for_far(genuine: np.ndarray, impostor: np.ndarray, target_far: float) -> ErrorRates:
    """The lowest threshold whose FAR <= ``target_far``, and the rates it gives.

    Lowest means FRR is as small as the FAR budget allows. FAR(t) only drops just *after* an
    impostor score, so the answer is one ULP (in the scores' precision) above the impostor score
    that would otherwise be one accept too many; any threshold up to the next observed score
    gives the same empirical rates.

    The returned ``far`` is the empirical FAR actually achieved, not the target: with N
    impostor scores FAR moves in steps of 1/N, so asking for 0.1 % with 30 impostors returns
    ``far == 0.0`` (nothing better can be claimed from so few trials; the rule of three puts the
    95 % upper bound at about 3/N).
    """
    if not 0.0 <= target_far < 1.0:
        raise ValueError("target_far must be in [0, 1): every threshold meets a FAR target of 1")
    g, i, dtype = _pair(genuine, impostor)
    n = i.size
    # Largest number of accepted impostors c with c / n <= target, computed with the very
    # expression FAR uses, so float rounding of target * n cannot make it one off.
    allowed = min(math.floor(target_far * n), n - 1)
    while allowed + 1 < n and (allowed + 1) / n <= target_far:
        allowed += 1
    while allowed > 0 and allowed / n > target_far:
        allowed -= 1
    # Accepting at most `allowed` impostors means rejecting the (allowed + 1)-th highest one.
    boundary = float(i[n - 1 - allowed])
    threshold = _step_up(boundary, dtype)
    far, frr = _rates(g, i, np.array([threshold]))
    return ErrorRates(threshold=threshold, far=float(far[0]), frr=float(frr[0]))


# ------------------------------------------------------------------------------------------------
# Identification
# ------------------------------------------------------------------------------------------------


def identification_accuracy(
    score_matrix: np.ndarray, probe_labels: list[str], gallery_labels: list[str], k: int
) -> float:
    """Closed-set top-``k`` identification accuracy.

    ``score_matrix[p, g]`` scores probe ``p`` against gallery entry ``g``. Only probes whose label
    occurs in the gallery are counted (open-set probes have no right answer here). Gallery
    entries are ranked **per speaker** — a speaker's score is its best entry's — so several
    entries of one speaker cannot crowd others out of the top ``k``. Ties are counted against
    the probe: it is a hit only if fewer than ``k`` other speakers score >= its true speaker.
    """
    scores = np.asarray(score_matrix, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != (len(probe_labels), len(gallery_labels)):
        raise ValueError(
            f"score_matrix shape {scores.shape} does not match "
            f"{len(probe_labels)} probes x {len(gallery_labels)} gallery entries"
        )
    if k < 1:
        raise ValueError("k must be >= 1")
    index = {label: n for n, label in enumerate(dict.fromkeys(gallery_labels))}
    column_speaker = np.array([index[label] for label in gallery_labels], dtype=np.int64)
    rows = [p for p, label in enumerate(probe_labels) if label in index]
    if not rows:
        raise ValueError("no probe's label occurs in the gallery")
    # Best score per speaker: sort columns by speaker, then reduce each speaker's run with max.
    order = np.argsort(column_speaker, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(column_speaker[order]) != 0])
    per_speaker = np.maximum.reduceat(scores[np.ix_(rows, order)], starts, axis=1)
    truth = np.array([index[probe_labels[p]] for p in rows])
    true_scores = per_speaker[np.arange(len(rows)), truth]
    rivals = np.sum(per_speaker >= true_scores[:, None], axis=1) - 1  # minus the true speaker
    return float(np.mean(rivals < k))


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-logaddexp(0, -x)) == 1 / (1 + exp(-x)) without overflow for large |x|.
    return np.exp(-np.logaddexp(0.0, -x))


@dataclass(frozen=True)
class LogisticCalibration:
    """Linear score → log-odds map: ``logit(P(same speaker | score)) = a * score + b``.

    The log-odds are *posterior* log-odds at the prior ``prior`` used in fitting (the assumed
    fraction of genuine trials). :meth:`llr` removes that prior, giving a log-likelihood ratio
    that can be combined with any other prior: ``posterior log-odds = llr + logit(prior)``.
    """

    a: float
    b: float
    prior: float

    @overload
    def probability(self, scores: float, prior: float | None = None) -> float: ...
    @overload
    def probability(self, scores: np.ndarray, prior: float | None = None) -> np.ndarray: ...
    def probability(
        self, scores: np.ndarray | float, prior: float | None = None
    ) -> np.ndarray | float:
        """Match probability in (0, 1) at the fitting prior, or at ``prior`` if given."""
        log_odds = self.llr(scores) + _logit(self.prior if prior is None else prior)
        p = np.clip(_sigmoid(np.asarray(log_odds, dtype=np.float64)), 1e-15, 1.0 - 1e-15)
        return float(p) if np.ndim(scores) == 0 else p

    @overload
    def llr(self, scores: float) -> float: ...
    @overload
    def llr(self, scores: np.ndarray) -> np.ndarray: ...
    def llr(self, scores: np.ndarray | float) -> np.ndarray | float:
        """Natural-log likelihood ratio ``log p(s | same) / p(s | different)``."""
        out = self.a * np.asarray(scores, dtype=np.float64) + self.b - _logit(self.prior)
        return float(out) if np.ndim(scores) == 0 else out

    def to_dict(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "prior": self.prior}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogisticCalibration:
        return cls(a=float(d["a"]), b=float(d["b"]), prior=float(d["prior"]))


def fit_logistic_calibration(
    genuine: np.ndarray,
    impostor: np.ndarray,
    *,
    prior: float = 0.5,
    l2: float = 1e-3,
) -> LogisticCalibration:
    """Fit ``logit(p) = a * score + b`` by prior-weighted logistic regression.

    Objective (Brümmer's linear calibration, as in FoCal / BOSARIS): the cross-entropy
    ``prior * mean_gen[-log p] + (1 - prior) * mean_imp[-log (1 - p)]`` in nats, i.e. each class
    re-weighted so the genuine class carries total weight ``prior`` whatever the trial counts.
    The fitted log-odds are therefore posterior log-odds at ``prior``; with ``prior = 0.5`` they
    equal the LLR.

    ``l2`` is a Gaussian prior on the slope: the objective, summed over trials (weights scaled
    to average 1 per trial), gets ``+ l2 / 2 * a_std**2``, where ``a_std`` is the slope on
    *standardised* scores (so the penalty does not depend on the score scale; the intercept is
    not penalised). Being one fixed prior against a likelihood that grows with the trial count,
    it is negligible on real evaluation sets (no measurable shrinkage with thousands of trials)
    yet keeps the fit finite when the classes are perfectly separable — otherwise the slope
    would grow without bound — and steadies tiny data sets (a handful of genuine trials).

    Solved by Newton's method (IRLS) with a backtracking line search; the objective is strictly
    convex for ``l2 > 0``, so this converges from the zero start in a few dozen steps.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError("prior must be in (0, 1)")
    if l2 < 0:
        raise ValueError("l2 must be >= 0")
    g, _ = _scores(genuine, "genuine")
    i, _ = _scores(impostor, "impostor")

    # Standardise for conditioning (cosine scores and PLDA LLRs differ by orders of magnitude).
    pooled = np.concatenate([g, i])
    centre = float(pooled.mean())
    scale = float(pooled.std()) or 1.0
    x = np.stack([(pooled - centre) / scale, np.ones_like(pooled)], axis=1)
    y = np.concatenate([np.ones(g.size), np.zeros(i.size)])
    w = np.concatenate([np.full(g.size, prior / g.size), np.full(i.size, (1 - prior) / i.size)])
    # In the per-trial-mean form the objective is solved in, the prior's weight is l2 / N.
    ridge = np.array([l2 / pooled.size, 0.0])

    sign = 1.0 - 2.0 * y  # -1 genuine, +1 impostor

    def objective(theta: np.ndarray) -> float:
        # -log p = log(1 + e^-z) for genuine, -log(1 - p) = log(1 + e^z) for impostors.
        losses = np.logaddexp(0.0, sign * (x @ theta))
        return float(w @ losses + 0.5 * ridge @ theta**2)

    theta = np.zeros(2)
    value = objective(theta)
    for _ in range(100):
        p = _sigmoid(x @ theta)
        grad = x.T @ (w * (p - y)) + ridge * theta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + np.diag(ridge)
        # A whisker of extra curvature keeps the solve defined when separable data has pushed
        # every p to 0 or 1 (and with l2 = 0); the line search absorbs the bias.
        hess += 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)
        if decrement < 1e-20:
            break
        size = 1.0
        while True:
            candidate = theta - size * step
            new_value = objective(candidate)
            if new_value <= value - 0.25 * size * decrement or size < 1e-10:
                break
            size *= 0.5
        theta, value = candidate, new_value
        if size * decrement < 1e-18:
            break

    a_std, b_std = theta
    # Undo the standardisation: a_std * (s - centre) / scale + b_std == a * s + b.
    a = a_std / scale
    return LogisticCalibration(a=float(a), b=float(b_std - a * centre), prior=float(prior))


def cllr(genuine_llr: np.ndarray, impostor_llr: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits (Brümmer & du Preez, 2006).

    ``Cllr = 1 / (2 ln 2) * (mean_gen log(1 + e^-llr) + mean_imp log(1 + e^llr))``. 0 is perfect,
    1 is what a system that always says "LLR = 0" (no information) gets; above 1 the scores are
    worse than useless as stated, i.e. mis-calibrated. Inputs must be natural-log LLRs (e.g.
    :meth:`LogisticCalibration.llr`), not raw scores.
    """
    g, _ = _scores(genuine_llr, "genuine_llr")
    i, _ = _scores(impostor_llr, "impostor_llr")
    miss = float(np.mean(np.logaddexp(0.0, -g)))
    false_alarm = float(np.mean(np.logaddexp(0.0, i)))
    return (miss + false_alarm) / (2.0 * math.log(2.0))


# ------------------------------------------------------------------------------------------------
# AS-norm
# ------------------------------------------------------------------------------------------------


def top_k_stats(
    scores_vs_cohort: np.ndarray, k: int, *, eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the mean and standard deviation of the ``k`` highest cohort scores.

    Rows are embeddings (probes or enrolled speakers), columns cohort speakers. Using only the
    top k (the cohort members most similar to this embedding) is what makes AS-norm *adaptive*
    (Matějka et al., 2017): it estimates the impostor distribution the embedding actually
    competes with. ``k`` larger than the cohort uses the whole cohort. The std (population,
    ddof=0) is floored at ``eps`` so a degenerate cohort cannot divide by zero.
    """
    scores = np.asarray(scores_vs_cohort, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError("scores_vs_cohort must be 2-D with at least one cohort column")
    if k < 1:
        raise ValueError("k must be >= 1")
    k = min(k, scores.shape[1])
    # np.partition puts the k largest in the last k columns in O(cohort) per row, no full sort.
    top = np.partition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1), np.maximum(top.std(axis=1), eps)


def as_norm(
    raw: np.ndarray,
    probe_mean: np.ndarray,
    probe_std: np.ndarray,
    cand_mean: np.ndarray,
    cand_std: np.ndarray,
) -> np.ndarray:
    """Adaptive symmetric normalisation: ``0.5 * ((s - μp) / σp + (s - μc) / σc)``.

    ``raw`` is (n_probes, n_candidates); probe statistics have length n_probes, candidate
    statistics n_candidates (both from :func:`top_k_stats` against the same cohort). Averaging
    the probe-side (Z-norm-like) and candidate-side (T-norm-like) terms is the "symmetric"
    part: a probe or candidate that scores high against everyone ("hot") is pulled down.
    """
    s = np.asarray(raw, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError("raw must be 2-D (n_probes, n_candidates)")
    n_p, n_c = s.shape
    stats = {
        "probe_mean": (probe_mean, n_p),
        "probe_std": (probe_std, n_p),
        "cand_mean": (cand_mean, n_c),
        "cand_std": (cand_std, n_c),
    }
    arrays = {}
    for name, (values, expected) in stats.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (expected,):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({expected},)")
        arrays[name] = arr
    probe_side = (s - arrays["probe_mean"][:, None]) / arrays["probe_std"][:, None]
    cand_side = (s - arrays["cand_mean"][None, :]) / arrays["cand_std"][None, :]
    return 0.5 * (probe_side + cand_side)
