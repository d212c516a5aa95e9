"""service.decisions.scoring: hand-computed cases plus brute force on random scores; and the DET
plot."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.decisions.scoring import (
    ErrorRates,
    LogisticCalibration,
    as_norm,
    cllr,
    det_curve,
    eer,
    eer_from_curve,
    fit_logistic_calibration,
    identification_accuracy,
    rates_at,
    threshold_for_far,
    top_k_stats,
)
from service.evaluation.det_plot import save_det_plot


def brute_rates(genuine: np.ndarray, impostor: np.ndarray, t: float) -> tuple[float, float]:
    far = sum(1 for s in impostor if s >= t) / len(impostor)
    frr = sum(1 for s in genuine if s < t) / len(genuine)
    return far, frr


def random_scores(seed: int, n_gen: int = 40, n_imp: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Rounded, so ties between and within the classes really occur.
    genuine = np.round(rng.normal(0.6, 0.15, n_gen), 2)
    impostor = np.round(rng.normal(0.2, 0.15, n_imp), 2)
    return genuine, impostor


# ---------------------------------------------------------------------------------------------
# rates_at, det_curve
# ---------------------------------------------------------------------------------------------


def test_rates_at_counts_ties_as_accepts() -> None:
    genuine = np.array([0.5, 0.7, 0.9])
    impostor = np.array([0.1, 0.5, 0.5, 0.6])
    r = rates_at(genuine, impostor, 0.5)
    assert r == ErrorRates(threshold=0.5, far=3 / 4, frr=0.0)
    r = rates_at(genuine, impostor, 0.6)
    assert (r.far, r.frr) == (1 / 4, 1 / 3)


def test_rates_at_float32_ties_are_not_rounded_away() -> None:
    # float32(0.7) is just below 0.7. Compared in float32 (NumPy 2 casts a Python float to the
    # array's dtype) 0.7 would round to it and accept the score; in exact arithmetic it rejects.
    score = np.float32(0.7)
    r = rates_at(np.array([score]), np.array([score]), float(score))
    assert (r.far, r.frr) == (1.0, 0.0)
    r = rates_at(np.array([score]), np.array([score]), 0.7)
    assert (r.far, r.frr) == (0.0, 1.0)


def test_rates_at_matches_brute_force() -> None:
    genuine, impostor = random_scores(1)
    for t in np.r_[np.unique(np.r_[genuine, impostor]), -1.0, 2.0]:
        r = rates_at(genuine, impostor, float(t))
        assert (r.far, r.frr) == brute_rates(genuine, impostor, float(t))


def test_det_curve_is_monotone_complete_and_exact() -> None:
    genuine, impostor = random_scores(2)
    far, frr, thresholds = det_curve(genuine, impostor)
    assert np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(far) <= 0)
    assert np.all(np.diff(frr) >= 0)
    assert (far[0], frr[0]) == (1.0, 0.0)
    assert (far[-1], frr[-1]) == (0.0, 1.0)
    for f, m, t in zip(far, frr, thresholds, strict=True):
        assert (f, m) == brute_rates(genuine, impostor, float(t))


# ---------------------------------------------------------------------------------------------
# EER
# ---------------------------------------------------------------------------------------------


def test_eer_of_separated_scores_is_zero_at_a_real_threshold() -> None:
    rate, threshold = eer([0.7, 0.8, 0.9], [0.1, 0.2, 0.65])
    assert rate == 0.0
    r = rates_at([0.7, 0.8, 0.9], [0.1, 0.2, 0.65], threshold)
    assert (r.far, r.frr) == (0.0, 0.0)


def test_eer_of_identical_distributions_is_one_half() -> None:
    for n in (10, 11):
        scores = np.arange(float(n))
        assert eer(scores, scores)[0] == pytest.approx(0.5)
    assert eer([1.0, 1.0], [1.0, 1.0, 1.0])[0] == pytest.approx(0.5)
    rng = np.random.default_rng(3)
    assert eer(rng.normal(size=4000), rng.normal(size=4000))[0] == pytest.approx(0.5, abs=0.03)


def test_eer_hand_computed_interpolation() -> None:
    # genuine {2, 4}, impostor {1, 3}: t=2 -> FAR 1/2, FRR 0; t=3 -> FAR 1/2, FRR 1/2.
    rate, threshold = eer([2.0, 4.0], [1.0, 3.0])
    assert (rate, threshold) == (0.5, 3.0)
    # genuine {1,3,4,5}, impostor {2}: t=2 -> FAR 1, FRR 1/4; t=3 -> FAR 0, FRR 1/4.
    # Segment from (1, 1/4) to (0, 1/4) crosses FAR=FRR at 1/4, three quarters of the way.
    rate, threshold = eer([1.0, 3.0, 4.0, 5.0], [2.0])
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(2.75)


def test_eer_lies_between_far_and_frr_of_bracketing_points() -> None:
    for seed in range(5):
        genuine, impostor = random_scores(seed)
        rate, threshold = eer(genuine, impostor)
        far, frr, thresholds = det_curve(genuine, impostor)
        # The best achievable max(FAR, FRR) bounds the interpolated EER from above, the best
        # min(FAR, FRR) on the crossing pair from below.
        assert rate <= np.min(np.maximum(far, frr)) + 1e-12
        j = int(np.searchsorted(thresholds, threshold))
        assert min(far[j], frr[j]) - 1e-12 <= rate
        assert eer_from_curve(far[::-1], frr[::-1]) == pytest.approx(rate)


# ---------------------------------------------------------------------------------------------
# threshold_for_far
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 0.999])
def test_threshold_for_far_is_lowest_meeting_target(target: float) -> None:
    for seed in range(4):
        genuine, impostor = random_scores(seed, n_imp=100)
        r = threshold_for_far(genuine, impostor, target)
        far, frr = brute_rates(genuine, impostor, r.threshold)
        assert (r.far, r.frr) == (far, frr)
        assert r.far <= target
        # One step lower already accepts too many impostors: it is the lowest threshold.
        below = float(np.nextafter(r.threshold, -np.inf))
        assert brute_rates(genuine, impostor, below)[0] > target
        # And no candidate threshold (any score, or just above one) does better on FRR.
        candidates = np.unique(np.r_[genuine, impostor])
        candidates = np.r_[candidates, np.nextafter(candidates, np.inf)]
        feasible = [brute_rates(genuine, impostor, t) for t in candidates]
        assert r.frr == min(m for f, m in feasible if f <= target)


def test_threshold_for_far_reports_the_exact_far_with_few_impostors() -> None:
    genuine = np.linspace(0.4, 0.9, 6)
    impostor = np.linspace(0.0, 0.5, 30)
    r = threshold_for_far(genuine, impostor, 0.001)
    assert r.far == 0.0  # not 0.001: 30 impostors cannot resolve it
    assert r.threshold > 0.5
    assert r.frr == pytest.approx(2 / 6)  # 0.4 and 0.5 rejected


def test_threshold_for_far_with_float32_scores_steps_in_float32() -> None:
    genuine = np.array([0.5, 0.8], dtype=np.float32)
    impostor = np.array([0.1, 0.3, 0.7], dtype=np.float32)
    r = threshold_for_far(genuine, impostor, 0.0)
    assert np.float32(r.threshold) == r.threshold  # representable: rounding cannot flip it
    assert r.threshold == float(np.nextafter(np.float32(0.7), np.float32(1)))
    assert (r.far, r.frr) == (0.0, 0.5)


def test_threshold_for_far_rejects_bad_targets() -> None:
    with pytest.raises(ValueError):
        threshold_for_far([1.0], [0.0], 1.0)
    with pytest.raises(ValueError):
        threshold_for_far([1.0], [0.0], -0.1)


def test_empty_or_nan_scores_are_rejected() -> None:
    with pytest.raises(ValueError):
        eer([], [0.1])
    with pytest.raises(ValueError):
        rates_at([0.1, math.nan], [0.1], 0.0)


# ---------------------------------------------------------------------------------------------
# Identification
# ---------------------------------------------------------------------------------------------


def test_identification_accuracy_top1_top5() -> None:
    gallery = ["a", "b", "c", "d", "e", "f"]
    probes = ["a", "b", "c", "x"]  # "x" is not enrolled: excluded
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],  # a: rank 1
            [0.8, 0.7, 0.1, 0.1, 0.1, 0.1],  # b: rank 2
            [0.9, 0.8, 0.1, 0.7, 0.6, 0.5],  # c: rank 6 (last)
            [0.1, 0.1, 0.1, 0.1, 0.1, 0.99],  # x: would be "wrong" if counted
        ]
    )
    assert identification_accuracy(scores, probes, gallery, k=1) == pytest.approx(1 / 3)
    assert identification_accuracy(scores, probes, gallery, k=2) == pytest.approx(2 / 3)
    assert identification_accuracy(scores, probes, gallery, k=5) == pytest.approx(2 / 3)
    assert identification_accuracy(scores, probes, gallery, k=6) == pytest.approx(1.0)


def test_identification_ranks_speakers_not_entries_and_ties_count_against() -> None:
    gallery = ["a", "a", "a", "b"]
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    # Probe "b": three entries of "a" above it, but only one rival speaker.
    assert identification_accuracy(scores, ["b", "b"], gallery, k=2) == 1.0
    assert identification_accuracy(scores, ["b", "b"], gallery, k=1) == 0.0
    tie = np.array([[0.5, 0.5]])
    assert identification_accuracy(tie, ["a"], ["a", "b"], k=1) == 0.0
    assert identification_accuracy(tie, ["a"], ["a", "b"], k=2) == 1.0


def test_identification_accuracy_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    gallery = [f"s{n}" for n in range(12)]
    probes = [f"s{n}" for n in rng.integers(0, 15, size=50)]  # some not enrolled
    scores = rng.normal(size=(50, 12))
    enrolled = [p for p in range(50) if probes[p] in gallery]
    for k in (1, 3, 5):
        hits = 0
        for p in enrolled:
            top = np.argsort(-scores[p])[:k]
            hits += probes[p] in {gallery[g] for g in top}
        assert identification_accuracy(scores, probes, gallery, k) == hits / len(enrolled)


def test_identification_without_enrolled_probes_is_an_error() -> None:
    with pytest.raises(ValueError):
        identification_accuracy(np.zeros((1, 1)), ["x"], ["a"], k=1)


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------

MU_GEN, MU_IMP, SIGMA = 0.5, 0.3, 0.1


def true_log_odds(scores: np.ndarray, prior: float) -> np.ndarray:
    """Posterior log-odds for two equal-variance Gaussians: linear in the score."""
    a = (MU_GEN - MU_IMP) / SIGMA**2
    b = (MU_IMP**2 - MU_GEN**2) / (2 * SIGMA**2) + math.log(prior / (1 - prior))
    return a * scores + b


@pytest.mark.parametrize("prior", [0.5, 0.1])
def test_logistic_calibration_recovers_gaussian_posterior(prior: float) -> None:
    rng = np.random.default_rng(5)
    genuine = rng.normal(MU_GEN, SIGMA, 3000)
    impostor = rng.normal(MU_IMP, SIGMA, 12000)  # class counts unlike the prior on purpose
    cal = fit_logistic_calibration(genuine, impostor, prior=prior)
    a_true = (MU_GEN - MU_IMP) / SIGMA**2
    assert cal.a == pytest.approx(a_true, rel=0.06)
    # Compare log-odds where the data are, rather than the intercept alone (a and b correlate).
    grid = np.linspace(MU_IMP, MU_GEN, 5)
    np.testing.assert_allclose(cal.a * grid + cal.b, true_log_odds(grid, prior), atol=0.25)
    p = cal.probability(grid)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-true_log_odds(grid, prior))), atol=0.03)
    # The LLR does not depend on the prior the model was fitted at.
    np.testing.assert_allclose(cal.llr(grid), true_log_odds(grid, 0.5), atol=0.25)
    np.testing.assert_allclose(cal.probability(grid, prior=0.5), 1 / (1 + np.exp(-cal.llr(grid))))


def test_logistic_calibration_is_monotone_and_in_open_unit_interval() -> None:
    genuine, impostor = random_scores(6)
    cal = fit_logistic_calibration(genuine, impostor)
    grid = np.linspace(-5, 5, 1001)
    p = cal.probability(grid)
    assert cal.a > 0
    assert np.all(np.diff(p) >= 0)
    assert np.all((p > 0) & (p < 1))
    assert isinstance(cal.probability(0.3), float)
    assert isinstance(cal.llr(0.3), float)


def test_logistic_calibration_finite_on_separable_and_tiny_data() -> None:
    cal = fit_logistic_calibration([0.8, 0.85, 0.9], [0.1, 0.2, 0.3, 0.2])
    assert math.isfinite(cal.a) and math.isfinite(cal.b)
    assert 0 < cal.a < 1e3
    assert cal.probability(0.9) > 0.9 > 0.1 > cal.probability(0.1)
    rng = np.random.default_rng(7)
    cal = fit_logistic_calibration(rng.normal(0.6, 0.1, 6), rng.normal(0.2, 0.1, 30))
    assert math.isfinite(cal.a) and math.isfinite(cal.b) and cal.a > 0
    # Degenerate: one score value for both classes -> no information, p = prior.
    cal = fit_logistic_calibration([1.0, 1.0], [1.0, 1.0, 1.0], prior=0.2)
    assert cal.probability(1.0) == pytest.approx(0.2)


def test_logistic_calibration_dict_round_trip() -> None:
    cal = LogisticCalibration(a=12.5, b=-3.25, prior=0.01)
    again = LogisticCalibration.from_dict(cal.to_dict())
    assert again == cal


def test_cllr_perfect_useless_and_hand_computed() -> None:
    assert cllr(np.zeros(10), np.zeros(7)) == pytest.approx(1.0)
    assert cllr(np.full(5, 30.0), np.full(5, -30.0)) < 1e-10
    # llr = +-log(3): posterior 3/4 right -> each side log2(4/3); Cllr = log2(4/3).
    assert cllr([math.log(3)], [-math.log(3)]) == pytest.approx(math.log2(4 / 3))
    # Confidently wrong costs more than saying nothing.
    assert cllr([-5.0], [5.0]) > 1


def test_cllr_of_calibrated_scores_beats_miscalibrated() -> None:
    rng = np.random.default_rng(8)
    genuine = rng.normal(MU_GEN, SIGMA, 2000)
    impostor = rng.normal(MU_IMP, SIGMA, 2000)
    cal = fit_logistic_calibration(genuine, impostor)
    good = cllr(cal.llr(genuine), cal.llr(impostor))
    truth = cllr(true_log_odds(genuine, 0.5), true_log_odds(impostor, 0.5))
    assert good == pytest.approx(truth, abs=0.02)
    assert good < 0.6
    shifted = cllr(cal.llr(genuine) + 3, cal.llr(impostor) + 3)
    assert shifted > good + 0.1


# ---------------------------------------------------------------------------------------------
# AS-norm
# ---------------------------------------------------------------------------------------------


def test_top_k_stats_matches_loop() -> None:
    rng = np.random.default_rng(9)
    scores = rng.normal(size=(7, 50))
    mean, std = top_k_stats(scores, 10)
    for row in range(7):
        top = sorted(scores[row], reverse=True)[:10]
        assert mean[row] == pytest.approx(np.mean(top))
        assert std[row] == pytest.approx(np.std(top))
    # k beyond the cohort uses all of it; a constant cohort's std is floored, not zero.
    mean, std = top_k_stats(np.ones((2, 3)), 100)
    np.testing.assert_allclose(mean, 1.0)
    assert np.all(std > 0)


def test_as_norm_matches_loop() -> None:
    rng = np.random.default_rng(10)
    raw = rng.normal(size=(4, 6))
    pm, ps = rng.normal(size=4), rng.uniform(0.1, 1, 4)
    cm, cs = rng.normal(size=6), rng.uniform(0.1, 1, 6)
    out = as_norm(raw, pm, ps, cm, cs)
    for p in range(4):
        for c in range(6):
            expected = 0.5 * ((raw[p, c] - pm[p]) / ps[p] + (raw[p, c] - cm[c]) / cs[c])
            assert out[p, c] == pytest.approx(expected)
    with pytest.raises(ValueError):
        as_norm(raw, pm[:3], ps, cm, cs)


def test_as_norm_pulls_down_hot_embeddings() -> None:
    rng = np.random.default_rng(11)
    cohort_cold = rng.normal(0.1, 0.05, size=(1, 200))
    cohort_hot = cohort_cold + 0.3  # this embedding is similar to everyone
    m_cold, s_cold = top_k_stats(cohort_cold, 20)
    m_hot, s_hot = top_k_stats(cohort_hot, 20)
    raw = np.array([[0.6, 0.6]])  # the same raw score for two candidates
    cand_mean = np.r_[m_cold, m_hot]
    cand_std = np.r_[s_cold, s_hot]
    normed = as_norm(raw, m_cold, s_cold, cand_mean, cand_std)
    assert normed[0, 1] < normed[0, 0]  # the hot candidate's score is pulled down
    # Symmetrically for probes.
    normed = as_norm(np.array([[0.6], [0.6]]), np.r_[m_cold, m_hot], np.r_[s_cold, s_hot],
                     m_cold, s_cold)  # fmt: skip
    assert normed[1, 0] < normed[0, 0]


# ---------------------------------------------------------------------------------------------
# DET plot
# ---------------------------------------------------------------------------------------------


def test_det_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    genuine, impostor = random_scores(12, n_gen=300, n_imp=3000)
    far, frr, _ = det_curve(genuine, impostor)
    far2, frr2, _ = det_curve(genuine + 0.05, impostor)
    path = tmp_path / "plots" / "det.png"
    save_det_plot({"voicesearch": (far, frr), "with AS-norm": (far2, frr2)}, path, "DET")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_imports_are_cheap() -> None:
    # scoring is NumPy only; det_plot loads matplotlib only when a plot is drawn.
    code = (
        "import sys, service.decisions.scoring, service.evaluation.det_plot; "
        "heavy = {'torch', 'scipy', 'matplotlib'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
