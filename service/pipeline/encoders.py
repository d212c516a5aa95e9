"""Speaker encoders: one per encoder space, audio → L2-normalised embedding.

Inference holds no lock: every module is in eval mode and stateless at inference, gradients are
off per call (``torch.inference_mode`` is thread-local), so concurrent calls are safe. The caller
bounds how many run at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.pipeline.waveform import as_waveform, warmup_signal

#: Equal-length clips per encoder call in :meth:`SpeakerEncoder.embed_many`.
BATCH = 32


class SpeakerEncoder:
    """One speaker-embedding model: audio → L2-normalised float32 vector of length :attr:`dim`."""

    def __init__(
        self, classifier: Any, *, space: str, source: str, identity: str, dim: int = 0
    ) -> None:
        self.classifier = classifier
        self.space = space
        self.source = source
        self.identity = identity
        self.dim = dim or int(self.embed(warmup_signal()).shape[0])

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """float32 16 kHz mono 1-D samples → float32 ``(dim,)`` with unit L2 norm."""
        import torch

        wavs = as_waveform(samples)
        with torch.inference_mode():
            embedding = self.classifier.encode_batch(wavs)
        return self._unit(embedding.detach().reshape(-1).to("cpu", torch.float32).numpy())

    def embed_many(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """:meth:`embed` of each clip, in order. Clips of equal length (identify-speakers'
        windows) go through the model together, up to :data:`BATCH` per call, so the per-call
        overhead is paid once per batch rather than once per window."""
        import torch

        checked = [as_waveform(c) for c in clips]  # the same checks as one clip; (1, n) each
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(checked)
        by_length: dict[int, list[int]] = {}
        for i, wav in enumerate(checked):
            by_length.setdefault(int(wav.shape[1]), []).append(i)
        for indices in by_length.values():
            for lo in range(0, len(indices), BATCH):
                chunk = indices[lo : lo + BATCH]
                with torch.inference_mode():
                    rows = self.classifier.encode_batch(torch.cat([checked[i] for i in chunk]))
                vectors = rows.detach().reshape(len(chunk), -1).to("cpu", torch.float32).numpy()
                for i, vector in zip(chunk, vectors, strict=True):
                    out[i] = self._unit(vector)
        return out

    def _unit(self, vector: np.ndarray) -> np.ndarray:
        vector = np.array(vector, dtype=np.float32, copy=True)
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0.0:
            raise RuntimeError(f"the {self.space} encoder produced a degenerate embedding")
        vector /= np.float32(norm)
        return vector

    def __repr__(self) -> str:
        return f"SpeakerEncoder(space={self.space!r}, identity={self.identity!r}, dim={self.dim})"
