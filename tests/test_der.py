"""bench/der.py: the diarization error rate the conversations bench reports, on hand-made cases."""

from __future__ import annotations

import pytest

from bench.der import score

REF = [("a", 0.0, 5.0), ("b", 5.0, 10.0)]


def test_a_perfect_answer_under_other_names_scores_zero() -> None:
    result = score(REF, [("x", 0.0, 5.0), ("y", 5.0, 10.0)], collar=0.0)
    assert result.der == 0.0 and result.mapping == {"x": "a", "y": "b"}


def test_the_three_error_kinds() -> None:
    # One voice for everything: half the reference is confusion.
    assert score(REF, [("x", 0.0, 10.0)], collar=0.0).confusion_s == pytest.approx(5.0)
    # Speech missed and speech invented.
    result = score(REF, [("x", 0.0, 4.0), ("y", 5.0, 11.0)], collar=0.0)
    assert result.missed_s == pytest.approx(1.0)
    assert result.false_alarm_s == pytest.approx(1.0)
    assert result.der == pytest.approx(0.2)
    # Overlapped reference speech counts once per speaker.
    overlapped = [("a", 0.0, 6.0), ("b", 4.0, 10.0)]
    result = score(overlapped, [("x", 0.0, 5.0), ("y", 5.0, 10.0)], collar=0.0)
    assert result.reference_s == pytest.approx(12.0)
    assert result.missed_s == pytest.approx(2.0) and result.confusion_s == 0.0


def test_the_collar_forgives_boundaries_only() -> None:
    late = [("x", 0.0, 5.2), ("y", 5.2, 10.0)]
    assert score(REF, late, collar=0.0).confusion_s == pytest.approx(0.2)
    assert score(REF, late, collar=0.25).der == 0.0
    assert score(REF, [("x", 0.0, 6.0), ("y", 6.0, 10.0)], collar=0.25).der > 0.0
