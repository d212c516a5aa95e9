"""The reference backend: SpeechBrain's own inference, on the CPU or a CUDA GPU.

``encode_batch`` for speaker encoders, and ``classify_batch``'s computation for the language-ID
model (its classifier on ``encode_batch``'s embedding), as SpeechBrain documents them.
Gradients are off per call (``torch.inference_mode`` is thread-local, so concurrent calls are
safe). torch's thread count is process-wide and set once at start-up
(``service.pipeline.threads.configure_torch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.pipeline.backends import BACKEND_TORCH, HEAD_EMBEDDING, HEAD_LANGID
from service.pipeline.backends.runtime import padded_batch


class TorchRuntime:
    """A loaded SpeechBrain ``EncoderClassifier`` behind the :class:`ModelRuntime` interface."""

    backend = BACKEND_TORCH

    def __init__(self, classifier: Any, *, head: str, device: str = "cpu") -> None:
        if head not in (HEAD_EMBEDDING, HEAD_LANGID):
            raise ValueError(f"unknown head {head!r}")
        self.classifier = classifier
        self.head = head
        self.device = device

    def forward(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        batch, lengths = padded_batch(waves)
        wavs = torch.from_numpy(batch)
        # One clip: SpeechBrain's own default (no relative lengths), the documented call.
        lens = torch.from_numpy(lengths) if len(waves) > 1 else None
        with torch.inference_mode():
            out = self.classifier.encode_batch(wavs, lens)
            if self.head == HEAD_LANGID:
                # classify_batch's out_prob, without its label decoding (which fails on a label
                # set that does not fit the model: the caller checks that, with a clear error).
                out = self.classifier.mods.classifier(out)
        return out.detach().reshape(len(waves), -1).to("cpu", torch.float32).numpy().copy()

    def __repr__(self) -> str:
        return f"TorchRuntime(head={self.head}, device={self.device})"
