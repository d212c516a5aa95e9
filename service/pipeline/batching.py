"""Grouping clips of similar length into batches (bulk enrollment on a GPU).

A padded batch is not free of side effects: SpeechBrain's features and reflect-padded
convolutions see the zeros, so a padded row's embedding differs slightly from the clip run alone
(cosine 1 - 1.6e-3 measured for a clip padded to twice its length, the same for torch and ONNX).
Grouping clips whose lengths differ by at most :data:`MAX_PADDING` keeps that difference small,
and only a GPU gains enough from batching to be worth it: a CPU is already busy with one clip.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Largest share of a batch row that may be padding (shortest clip >= 95 % of the longest).
MAX_PADDING = 0.05


def similar_length_batches(
    lengths: Sequence[int], max_batch: int, max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Indices of ``lengths`` in batches of at most ``max_batch``, longest first, each batch's
    shortest clip at least ``(1 - max_padding)`` of its longest. Every index appears once."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if (
            current is not None
            and len(current) < max(1, max_batch)
            and lengths[index] >= (1.0 - max_padding) * lengths[current[0]]
        ):
            current.append(index)
        else:
            batches.append([index])
    return batches
