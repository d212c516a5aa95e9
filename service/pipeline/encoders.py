"""Speaker encoders: one per encoder space, audio → L2-normalised embedding.

The model itself runs behind a :class:`~service.pipeline.backends.runtime.ModelRuntime` (torch,
ONNX Runtime FP32 or INT8: ``service.pipeline.backends``); this class checks the input and
normalises the output. Inference holds no lock (every runtime is thread-safe); the caller bounds
how many run at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.pipeline.backends.runtime import ModelRuntime
from service.pipeline.batching import similar_length_batches
from service.pipeline.waveform import checked_samples, warmup_signal

#: Clips per batch in :meth:`SpeakerEncoder.embed_many` on a GPU (CPU: one at a time).
GPU_BATCH = 16

#: Equal-length clips per encoder call in :meth:`SpeakerEncoder.embed_many`.
BATCH = 32


class SpeakerEncoder:
    """One speaker-embedding model: audio → L2-normalised float32 vector of length :attr:`dim`."""

    def __init__(
        self,
        runtime: ModelRuntime,
        *,
        space: str,
        source: str,
        identity: str,
        classifier: Any = None,
        dim: int = 0,
    ) -> None:
        self.runtime = runtime
        self.classifier = classifier  # the SpeechBrain model (the reference; export source)
        self.space = space
        self.source = source
        self.identity = identity
        #: Batch size for bulk embedding: batches only pay off on a GPU.
        self.batch_size = GPU_BATCH if runtime.device.startswith("cuda") else 1
        self.dim = dim or int(self.embed(warmup_signal()).shape[0])

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """float32 16 kHz mono 1-D samples → float32 ``(dim,)`` with unit L2 norm."""
        return self._normalised(self.runtime.forward([checked_samples(samples)]))[0]

    def embed_many(
        self, clips: Sequence[np.ndarray], batch_size: int | None = None
    ) -> list[np.ndarray]:
        """:meth:`embed` of each clip, in order; on a GPU in batches of similar length.
        ``batch_size`` overrides :attr:`batch_size` (identify-speakers' windows, all of one
        length, gain from batches on a CPU too: no padding, fewer calls)."""
        checked = [checked_samples(c) for c in clips]
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(checked)
        lengths = [c.shape[0] for c in checked]
        for batch in similar_length_batches(lengths, batch_size or self.batch_size):
            vectors = self._normalised(self.runtime.forward([checked[i] for i in batch]))
            for index, vector in zip(batch, vectors, strict=True):
                out[index] = vector
        return out

    def _normalised(self, rows: np.ndarray) -> np.ndarray:
        vectors = np.array(rows, dtype=np.float32, copy=True)
        for vector in vectors:
            norm = float(np.linalg.norm(vector))
            if not math.isfinite(norm) or norm == 0.0:
                raise RuntimeError(f"the {self.space} encoder produced a degenerate embedding")
            vector /= np.float32(norm)
        return vectors

    def __repr__(self) -> str:
        return (
            f"SpeakerEncoder(space={self.space!r}, identity={self.identity!r}, dim={self.dim}, "
            f"backend={self.runtime.backend})"
        )
