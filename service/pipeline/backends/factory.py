"""Build the runtime a setting asks for, and the model identity its vectors carry.

Identity rule (what may share stored profiles):

* ``torch`` and ``onnx``: the checkpoint's identity (``<name>@sha256:<16 hex>``). The FP32 export
  reproduces PyTorch's vectors (cosine ≥ 0.99999 on every dev clip and condition), so switching
  between them keeps every enrolled profile.
* ``onnx-int8``: ``<identity>+int8.<8 hex>``, the hex naming the exporter version and the
  calibration audio. INT8 vectors are close to torch's (cosine ≥ 0.995) but not equal, and a
  score moves by up to ~0.03; mixing them in one index would make a speaker's score depend on
  which backend enrolled them, and the stored calibration (thresholds) would no longer fit. So an
  INT8 space is a space of its own: switching to or from it means re-enrolling (profiles made by
  the other identity are kept but ignored) and re-calibrating.

Fallbacks: an FP32 export that fails runs the model on torch instead (same vectors, same
identity; logged and shown in /health). An INT8 build that fails leaves the model unloaded with
the reason, since falling back would silently change the space's identity. With a CUDA device,
``onnx`` runs on ONNX Runtime's CUDA provider when the installed onnxruntime has it, else on
torch's CUDA (same identity); ``onnx-int8`` stays on the CPU. No GPU was available where this was
written: the CUDA paths are untested.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.core.settings import InferenceSettings
from service.pipeline.backends import BACKEND_ONNX, BACKEND_TORCH, BACKENDS
from service.pipeline.backends.calibration import CalibrationSet
from service.pipeline.backends.export_cache import EXPORTER_VERSION, ExportCache, ExportKey
from service.pipeline.backends.onnx_backend import OnnxRuntime, cuda_available_to_ort
from service.pipeline.backends.onnx_export import ExportError
from service.pipeline.backends.runtime import ModelRuntime
from service.pipeline.backends.torch_backend import TorchRuntime
from service.pipeline.loading import LoadedClassifier, ModelLoadError
from service.pipeline.threads import inference_threads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltRuntime:
    runtime: ModelRuntime
    identity: str  # model identity of the vectors it produces (see the module docstring)
    backend: str  # what runs, for /health: "onnx-int8", "torch (cuda)", …


def int8_identity(identity: str, calibration: CalibrationSet) -> str:
    tag = hashlib.sha256(f"v{EXPORTER_VERSION}:{calibration.digest}".encode()).hexdigest()[:8]
    return f"{identity}+int8.{tag}"


def _describe(runtime: ModelRuntime, note: str = "") -> str:
    where = "" if runtime.device == "cpu" else f" ({runtime.device})"
    return f"{runtime.backend}{where}{note}"


def _onnx_runtime(
    cache: ExportCache, build: Callable[[], Path], backend: str, threads: int, device: str
) -> OnnxRuntime:
    """Open the export ``build()`` returns; a file ORT cannot load is discarded and rebuilt."""
    path = build()
    try:
        return OnnxRuntime(path, backend=backend, threads=threads, device=device)
    except Exception as exc:  # an export ORT rejects (e.g. after an ORT upgrade): rebuild once
        log.warning("cannot load %s (%s: %s); rebuilding it", path, type(exc).__name__, exc)
        cache.discard(path)
        return OnnxRuntime(build(), backend=backend, threads=threads, device=device)


def build_runtime(
    loaded: LoadedClassifier,
    *,
    head: str,
    settings: InferenceSettings,
    device: str,
    cache: ExportCache,
    calibration: Callable[[], CalibrationSet],
) -> BuiltRuntime:
    """The runtime of one loaded model under ``settings.backend``; raises ModelLoadError."""
    backend = settings.backend
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    torch_runtime = TorchRuntime(loaded.classifier, head=head, device=device)
    if backend == BACKEND_TORCH:
        return BuiltRuntime(torch_runtime, loaded.identity, _describe(torch_runtime))
    threads = inference_threads(settings.threads)
    key = ExportKey(loaded.name, loaded.checkpoint_sha256, head)

    if backend == BACKEND_ONNX:
        if device.startswith("cuda") and not cuda_available_to_ort():
            log.info("onnxruntime has no CUDA provider here: %s runs on torch's CUDA", key.name)
            return BuiltRuntime(torch_runtime, loaded.identity, _describe(torch_runtime))
        try:
            runtime = _onnx_runtime(
                cache, lambda: cache.fp32(key, loaded.classifier), backend, threads, device
            )
        except (ExportError, RuntimeError, OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("ONNX export of %s failed, running it on torch: %s", key.name, reason)
            note = f"; onnx export failed: {reason[:200]}"
            return BuiltRuntime(torch_runtime, loaded.identity, _describe(torch_runtime, note))
        return BuiltRuntime(runtime, loaded.identity, _describe(runtime))

    # onnx-int8
    try:
        chosen = calibration()
        runtime = _onnx_runtime(
            cache,
            lambda: cache.int8(key, loaded.classifier, chosen),
            backend,
            threads,
            "cpu",  # QDQ models are a CPU format; a GPU runs the torch or onnx backend
        )
    except (ExportError, RuntimeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"INT8 model could not be built: {type(exc).__name__}: {exc}") from exc
    return BuiltRuntime(runtime, int8_identity(loaded.identity, chosen), _describe(runtime))
