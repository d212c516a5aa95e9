"""Window embeddings → speakers: agglomerative clustering on cosine similarity.

Average-linkage agglomerative clustering (SciPy) is the classic diarization back end: it needs
no number of speakers up front — merging stops when the two closest groups are less similar
than ``threshold`` on average — and it can also be cut at a given number of speakers
(``num_speakers``) or capped (``max_speakers``). Two clean-ups follow, both standard:

* **Re-assignment**: each window moves to the most similar cluster centroid (a couple of
  k-means steps). Average linkage decides merges from pairs of groups; windows near a turn
  change that were merged early into the wrong group are corrected here.
* **Tiny clusters** (less than ``min_cluster_windows`` windows, i.e. under about two seconds of
  speech) are folded into their most similar neighbour: with an estimated number of speakers,
  a handful of windows spanning two voices otherwise becomes a phantom speaker.

Embeddings are unit vectors, so cosine similarity is a dot product and a centroid is the
normalised mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClusterSettings:
    threshold: float = 0.45  # least average cosine similarity for two groups to be one speaker
    min_cluster_windows: int = 3
    refine_iterations: int = 2


def centroids(embeddings: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``(k, dim)`` unit mean of each label's rows (labels are ``0..k-1``, none empty)."""
    out = np.stack([embeddings[labels == c].mean(axis=0) for c in range(k)])
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).astype(np.float32)


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered ``0..k-1`` in order of first appearance (so speaker 1 speaks first)."""
    order: dict[int, int] = {}
    out = np.empty_like(labels)
    for i, label in enumerate(labels.tolist()):
        out[i] = order.setdefault(label, len(order))
    return out, len(order)


def _agglomerative(
    embeddings: np.ndarray, threshold: float, num: int | None, cap: int | None
) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage

    if embeddings.shape[0] == 1:
        return np.zeros(1, dtype=np.int64)
    # Cosine distance = 1 - similarity; "average": the mean pairwise distance between groups.
    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    if num is not None:
        labels = fcluster(tree, t=num, criterion="maxclust")
    else:
        labels = fcluster(tree, t=1.0 - threshold, criterion="distance")
        if cap is not None and labels.max() > cap:
            labels = fcluster(tree, t=cap, criterion="maxclust")
    return labels.astype(np.int64) - 1


def cluster(
    embeddings: np.ndarray,
    settings: ClusterSettings,
    *,
    num_speakers: int | None = None,
    max_speakers: int | None = None,
) -> np.ndarray:
    """One speaker label per row of ``embeddings`` (unit vectors), numbered ``0..k-1`` in order
    of first appearance. ``num_speakers`` fixes k (when there are that many windows);
    ``max_speakers`` caps the estimated k."""
    n = embeddings.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    num = min(num_speakers, n) if num_speakers is not None else None
    labels, k = _relabel(_agglomerative(embeddings, settings.threshold, num, max_speakers))
    for _ in range(settings.refine_iterations):
        if k < 2:
            break
        scores = embeddings @ centroids(embeddings, labels, k).T
        moved, k = _relabel(np.argmax(scores, axis=1))
        if np.array_equal(moved, labels):
            break
        labels = moved
    if num is None:
        labels, k = _fold_tiny(embeddings, labels, k, settings.min_cluster_windows)
    return labels


def _fold_tiny(
    embeddings: np.ndarray, labels: np.ndarray, k: int, min_windows: int
) -> tuple[np.ndarray, int]:
    """Move the windows of clusters smaller than ``min_windows`` to their most similar big
    cluster (if there is one: a recording with only tiny clusters keeps them)."""
    sizes = np.bincount(labels, minlength=k)
    big = np.flatnonzero(sizes >= min_windows)
    if big.size == 0 or big.size == k:
        return labels, k
    scores = embeddings @ centroids(embeddings, labels, k)[big].T
    labels = np.where(np.isin(labels, big), labels, big[np.argmax(scores, axis=1)])
    return _relabel(labels)
