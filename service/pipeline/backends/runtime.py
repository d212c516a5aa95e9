"""The one interface every backend implements, and the batch layout they share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class ModelRuntime(Protocol):
    """Runs one model: checked 16 kHz mono float32 clips → raw outputs, one row per clip.

    ``forward`` is thread-safe and holds no lock; the caller bounds concurrency. A batch of
    clips of different lengths is zero-padded and each clip's relative length passed along, as
    SpeechBrain does (so a padded row is close to, not equal to, the clip run alone).
    """

    backend: str  # "torch", "onnx" or "onnx-int8"
    device: str  # "cpu", "cuda", "cuda:1"…

    def forward(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """float32 ``[len(waves), D]``: embeddings (not normalised) or log-posteriors."""
        ...


def padded_batch(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded ``[B, N]`` float32 batch and relative lengths ``[B]`` (longest = 1.0)."""
    if not waves:
        raise ValueError("no clips given")
    longest = max(int(w.shape[0]) for w in waves)
    batch = np.zeros((len(waves), longest), dtype=np.float32)
    lengths = np.empty(len(waves), dtype=np.float32)
    for row, wave in enumerate(waves):
        batch[row, : wave.shape[0]] = wave
        lengths[row] = wave.shape[0] / longest
    return batch, lengths
