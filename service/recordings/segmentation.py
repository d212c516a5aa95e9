"""Speech regions of a recording → the short windows that are embedded.

A speaker embedding needs about a second of speech to say anything, yet a turn can be shorter
than two seconds: windows of ``window_s`` (1.5 s) every ``hop_s`` (0.75 s) inside each speech
region are the usual compromise of diarization front ends (e.g. pyannote's and NeMo's
multi-scale defaults sit around 1.5 s / 0.75 s). A region shorter than a window gets one window
of its own length, if it reaches ``min_window_s``; below that its speech is attributed by the
timeline to the nearest window instead (``service.recordings.timeline``).
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Region:
    """A stretch of speech, in samples of the 16 kHz recording."""

    start: int
    end: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


@dataclass(frozen=True)
class WindowPlan:
    window_s: float = 1.5
    hop_s: float = 0.75
    min_window_s: float = 0.5  # shorter speech is too little for a trustworthy embedding


def merge_regions(segments: list[tuple[int, int]], *, max_gap_s: float, total: int) -> list[Region]:
    """Sorted, clipped to ``[0, total)``, and joined where the silence between two is at most
    ``max_gap_s`` (a breath inside a sentence is not a turn boundary)."""
    gap = round(max_gap_s * SAMPLE_RATE)
    merged: list[list[int]] = []
    for start, end in sorted(segments):
        start, end = max(0, int(start)), min(total, int(end))
        if end <= start:
            continue
        if merged and start - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [Region(s, e) for s, e in merged]


def plan_windows(regions: list[Region], plan: WindowPlan) -> list[Region]:
    """Windows covering every region: full windows every hop, the last one flush with the
    region's end (so its final words are embedded too), one short window for a short region."""
    win = round(plan.window_s * SAMPLE_RATE)
    hop = round(plan.hop_s * SAMPLE_RATE)
    shortest = round(plan.min_window_s * SAMPLE_RATE)
    windows: list[Region] = []
    for region in regions:
        length = region.end - region.start
        if length < shortest:
            continue
        if length <= win:
            windows.append(region)
            continue
        starts = list(range(region.start, region.end - win + 1, hop))
        if starts[-1] + win < region.end:
            starts.append(region.end - win)
        windows.extend(Region(s, s + win) for s in starts)
    return windows
