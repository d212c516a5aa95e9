"""Diarization error rate, scored like NIST md-eval on 10 ms frames.

``DER = (missed + false alarm + confusion) / reference speech``, each term summed over frames
and weighted by the number of speakers in the frame (overlapped speech counts twice):

* missed = max(0, n_ref - n_hyp), false alarm = max(0, n_hyp - n_ref),
* confusion = min(n_ref, n_hyp) - (hypothesis speakers in the frame whose mapped reference
  speaker is also in it).

The mapping of hypothesis speakers to reference speakers is the one-to-one assignment that
maximises their overlapping time (Hungarian algorithm, SciPy). With a ``collar`` (the standard
0.25 s), frames within that distance of any reference turn boundary are not scored: human
references cannot place a boundary more precisely than that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FPS = 100


@dataclass(frozen=True)
class DerResult:
    reference_s: float
    missed_s: float
    false_alarm_s: float
    confusion_s: float
    mapping: dict[str, str]  # hypothesis label -> reference speaker

    @property
    def der(self) -> float:
        return (self.missed_s + self.false_alarm_s + self.confusion_s) / self.reference_s


def _grid(turns: list[tuple[str, float, float]], names: list[str], n: int) -> np.ndarray:
    grid = np.zeros((len(names), n), dtype=bool)
    index = {name: i for i, name in enumerate(names)}
    for speaker, start, end in turns:
        grid[index[speaker], round(start * FPS) : round(end * FPS)] = True
    return grid


def score(
    reference: list[tuple[str, float, float]],
    hypothesis: list[tuple[str, float, float]],
    *,
    collar: float = 0.25,
) -> DerResult:
    """``reference`` and ``hypothesis``: ``(speaker, start_s, end_s)`` turns."""
    from scipy.optimize import linear_sum_assignment

    end = max([e for _, _, e in reference] + [e for _, _, e in hypothesis] + [0.0])
    n = round(end * FPS) + 1
    ref_names = sorted({s for s, _, _ in reference})
    hyp_names = sorted({s for s, _, _ in hypothesis})
    ref = _grid(reference, ref_names, n)
    hyp = _grid(hypothesis, hyp_names, n)
    scored = np.ones(n, dtype=bool)
    if collar > 0:
        c = round(collar * FPS)
        for _, start, stop in reference:
            for edge in (round(start * FPS), round(stop * FPS)):
                scored[max(0, edge - c) : edge + c] = False
    ref, hyp = ref[:, scored], hyp[:, scored]
    overlap = hyp.astype(np.int64) @ ref.T.astype(np.int64)  # (n_hyp, n_ref) frames
    rows, cols = linear_sum_assignment(-overlap) if overlap.size else ([], [])
    mapping = {hyp_names[r]: ref_names[c] for r, c in zip(rows, cols, strict=True)}
    n_ref = ref.sum(axis=0)
    n_hyp = hyp.sum(axis=0)
    correct = np.zeros(ref.shape[1], dtype=np.int64)
    for r, c in zip(rows, cols, strict=True):
        correct += hyp[r] & ref[c]
    missed = np.maximum(0, n_ref - n_hyp).sum()
    false_alarm = np.maximum(0, n_hyp - n_ref).sum()
    confusion = (np.minimum(n_ref, n_hyp) - correct).sum()
    return DerResult(
        reference_s=float(n_ref.sum()) / FPS,
        missed_s=float(missed) / FPS,
        false_alarm_s=float(false_alarm) / FPS,
        confusion_s=float(confusion) / FPS,
        mapping=mapping,
    )
