"""Speaker encoders: one per encoder space, audio → L2-normalised embedding.

Inference holds no lock: every module is in eval mode and stateless at inference, gradients are
off per call (``torch.inference_mode`` is thread-local), so concurrent calls are safe. The caller
bounds how many run at once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.pipeline.waveform import as_waveform, warmup_signal


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
        vector = embedding.detach().reshape(-1).to("cpu", torch.float32).numpy()
        vector = np.array(vector, dtype=np.float32, copy=True)
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0.0:
            raise RuntimeError(f"the {self.space} encoder produced a degenerate embedding")
        vector /= np.float32(norm)
        return vector

    def __repr__(self) -> str:
        return f"SpeakerEncoder(space={self.space!r}, identity={self.identity!r}, dim={self.dim})"
