"""Static INT8 quantisation of an exported ECAPA graph (QDQ, calibrated on speech).

Recipe, each choice measured on this project's AVX2 (no VNNI) CPU against PyTorch on the
dev-speech clips and their degraded versions (bench/conditions: short, tel8k, noise10, mp3_32k):

* Static QDQ on the ``Conv`` ops, per-channel weights, u8 activations, MinMax ranges over the
  calibration clips (one clip per batch, in order: the result is byte-identical run to run).
* **u8 weights**, not ORT's usual s8: on CPUs without VNNI, ORT's u8×s8 kernel saturates 16-bit
  pair sums, and the embedding came out wrong (cosine 0.67 to torch). u8×u8 products are
  accumulated exactly on every x86 CPU, so the model is right wherever it runs.
* Kept in FP32: the DFT conv (features), the first ECAPA conv and the first SE-Res2Net block
  (~15 % of the compute; with them INT8 the worst clip fell to cosine 0.9935 on noisy audio,
  without them it is 0.997), and the convs after pooling (SE gates, the final FC: one frame
  each, no speed to gain). Everything that is not a Conv (filterbank, norms, pooling, any
  classifier head) stays FP32.

The result runs ~1.9x faster than the FP32 graph in CPU time and keeps cosine ≥ 0.995 to torch
on every dev clip and condition (tests/test_backends_real.py, bench/RESULTS.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.pipeline.backends.onnx_export import DFT_BUFFER, ExportError, set_metadata

#: Name fragments of the first ECAPA conv and of the first SE-Res2Net block (SpeechBrain's
#: ``ECAPA_TDNN.blocks[0]`` and ``[1]``; the TorchScript exporter names nodes by module path).
FP32_BLOCKS = ("/embedding/blocks.0/", "/embedding/blocks.1/")


class _CalibrationReader:
    """ORT ``CalibrationDataReader``: one clip per batch, in order; reports each clip read."""

    def __init__(self, waves: Sequence[np.ndarray], on_clip: Callable[[], None]) -> None:
        self._waves = [np.ascontiguousarray(w, dtype=np.float32) for w in waves]
        self._next = 0
        self._on_clip = on_clip

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._waves):
            return None
        wave = self._waves[self._next]
        self._next += 1
        self._on_clip()
        return {"wav": wave[None, :], "lens": np.ones(1, dtype=np.float32)}

    def rewind(self) -> None:
        self._next = 0


def _pooled_convs(model: Any) -> list[str]:
    """Conv nodes whose output has a time axis of length 1 (found by running the graph once on
    1 s of noise with every Conv output exposed)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    convs = [node for node in probe.graph.node if node.op_type == "Conv"]
    known = {output.name for output in probe.graph.output}
    for node in convs:
        if node.output[0] not in known:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.output[0]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    noise = 0.1 * np.random.default_rng(0).standard_normal((1, 16_000))
    feed = {"wav": noise.astype(np.float32), "lens": np.ones(1, dtype=np.float32)}
    names = [output.name for output in session.get_outputs()]
    shapes = {name: value.shape for name, value in zip(names, session.run(None, feed), strict=True)}
    return [node.name for node in convs if shapes[node.output[0]][-1] == 1]


def fp32_convs(model: Any) -> list[str]:
    """Names of the Conv nodes the recipe keeps in FP32 (see the module docstring)."""
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    dft = [node.name for node in convs if len(node.input) > 1 and DFT_BUFFER in node.input[1]]
    if len(dft) != 1:
        raise ExportError(f"expected one DFT-basis Conv in the graph, found {len(dft)}")
    keep = list(dft)
    for fragment in FP32_BLOCKS:
        found = [node.name for node in convs if fragment in node.name]
        if not found:
            raise ExportError(f"no Conv named like {fragment!r}: not the ECAPA layout expected")
        keep += found
    keep += [name for name in _pooled_convs(model) if name not in keep]
    return keep


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration: Sequence[np.ndarray],
    *,
    on_clip: Callable[[], None] = lambda: None,
) -> None:
    """Write the INT8 copy of the FP32 graph at ``fp32_path`` (see the module docstring).

    ``calibration``: 16 kHz mono float32 clips; ``on_clip`` is called as each one is read.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ExportError("no calibration audio")
    with tempfile.TemporaryDirectory(prefix="voicesearch-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # ORT's symbolic shape inference fails on the DFT conv's dynamic shapes; ONNX shape
        # inference plus graph optimisation is all quantisation needs.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        keep = fp32_convs(onnx.load(str(pre)))
        quantize_static(
            str(pre),
            str(int8_path),
            _CalibrationReader(calibration, on_clip),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=keep,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
        )
    model = onnx.load(str(int8_path))
    set_metadata(model, precision="int8")
    onnx.save(model, str(int8_path))
