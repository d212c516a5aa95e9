"""Window labels → a timeline of segments (``start``, ``end``, speaker).

Windows overlap (1.5 s every 0.75 s), so a moment of speech lies under two of them. Each 10 ms
frame of speech takes the label of the window whose *centre* is nearest — the standard way to
turn overlapping window decisions into boundaries at half-hop resolution — and runs of frames
with one label inside one speech region become a segment. Speech in a region too short for a
window of its own is attributed the same way, to the nearest window.

This timeline has one speaker at a time: in overlapped speech the louder (better embedded)
voice wins and the other is missed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.recordings.segmentation import SAMPLE_RATE, Region

FRAME = SAMPLE_RATE // 100  # 10 ms


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    label: int  # cluster number
    score: float  # mean cosine of its windows to their cluster's centroid


def _nearest(centres: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Index into sorted ``centres`` of the one nearest to each point."""
    right = np.clip(np.searchsorted(centres, points), 1, len(centres) - 1)
    left = right - 1
    return np.where(points - centres[left] <= centres[right] - points, left, right)


def build_timeline(
    regions: list[Region],
    windows: list[Region],
    labels: np.ndarray,
    window_scores: np.ndarray,
) -> list[Segment]:
    """Segments in time order. ``windows`` are sorted by start (as ``plan_windows`` makes
    them); ``labels`` and ``window_scores`` have one entry per window."""
    if not windows:
        return []
    centres = np.array([(w.start + w.end) / 2 for w in windows], dtype=np.float64)
    segments: list[Segment] = []
    for region in regions:
        frame_starts = np.arange(region.start, region.end, FRAME)
        if frame_starts.size == 0:
            continue
        if len(centres) == 1:
            owner = np.zeros(frame_starts.size, dtype=np.int64)
        else:
            owner = _nearest(centres, frame_starts + FRAME / 2)
        frame_labels = labels[owner]
        # Boundaries where the label changes.
        cuts = np.flatnonzero(np.diff(frame_labels)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, frame_labels.size], strict=True):
            start = int(frame_starts[lo])
            end = min(int(frame_starts[hi - 1]) + FRAME, region.end)
            used = np.unique(owner[lo:hi])
            segments.append(
                Segment(
                    start=start / SAMPLE_RATE,
                    end=end / SAMPLE_RATE,
                    label=int(frame_labels[lo]),
                    score=float(np.mean(window_scores[used])),
                )
            )
    return segments
