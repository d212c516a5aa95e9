"""ONNX Runtime backend: an exported graph (``onnx_export.py``, ``int8.py``) in one session.

Session choices, measured on a 2-core box shared with other processes (bench/RESULTS.md):
``intra_op_threads`` follows the cores this process may use (``service.pipeline.threads``), one
inter-op thread, sequential execution, and **no spinning**: with spinning on, a waiting worker
thread burns the core another process (or this one's other request) needs, which cost 5-25 %
wall time and 20-30 % CPU under contention. ``InferenceSession.run`` is thread-safe.

CUDA: when the device is CUDA and the installed onnxruntime has the CUDA execution provider
(the ``onnxruntime-gpu`` package), it is used, with the CPU provider as fallback. No GPU was
available where this was written: that path is untested.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.pipeline.backends.runtime import padded_batch

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    return options


def providers_for(device: str) -> list[str]:
    """ORT execution providers for a torch-style device name."""
    import onnxruntime as ort

    if device.startswith("cuda") and CUDA_PROVIDER in ort.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def cuda_available_to_ort() -> bool:
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()


class OnnxRuntime:
    """An exported ECAPA graph (``wav [B, N]``, ``lens [B]`` → one output ``[B, D]``)."""

    def __init__(self, path: Path, *, backend: str, threads: int, device: str = "cpu") -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.backend = backend
        providers = providers_for(device)
        self.device = "cuda" if providers[0] == CUDA_PROVIDER else "cpu"
        self.threads = max(1, threads)
        self._session = ort.InferenceSession(
            str(self.path), session_options(self.threads), providers=providers
        )
        self._output = self._session.get_outputs()[0].name

    def forward(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        batch, lengths = padded_batch(waves)
        (out,) = self._session.run([self._output], {"wav": batch, "lens": lengths})
        return np.asarray(out, dtype=np.float32).reshape(len(waves), -1)

    def __repr__(self) -> str:
        return f"OnnxRuntime({self.path.name!r}, backend={self.backend}, threads={self.threads})"
