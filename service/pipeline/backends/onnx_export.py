"""A SpeechBrain ECAPA ``EncoderClassifier`` → one FP32 ONNX graph, waveform in, output out.

Inputs ``wav`` float32 ``[B, N]`` (16 kHz, zero-padded) and ``lens`` float32 ``[B]`` (relative
lengths, SpeechBrain's convention); output ``emb`` ``[B, D]`` (exactly ``encode_batch``'s
vector, not normalised) or ``log_post`` ``[B, C]`` (``classify_batch``'s ``out_prob``). Batch
and length are dynamic. Three things make that graph both exact and fast (measured, see
``../shared/notes/onnx-int8-ecapa.md``):

* ``torch.stft`` is replaced by a Conv1d over a fixed Hamming-windowed DFT basis followed by
  SpeechBrain's own filterbank: the same features to ~1e-4, where ORT's own STFT kernel is 7-15x
  slower than torch at n_fft=400 and the TorchScript exporter cannot export a complex STFT.
* SpeechBrain's ``length_to_mask`` calls ``len()`` on the batch, so any tracer bakes the example's
  batch size into the graph, silently; it is replaced, only while exporting
  (:func:`traceable_length_to_mask`), by a broadcasting version with identical values, and the
  exported graph is checked to have a symbolic batch dimension.
* The TorchScript exporter (``dynamo=False``): ~6 s for the real model where the dynamo exporter
  took ~40 s, with the same graph and numerics (cosine to torch 1 - 1e-8 and better). torch is
  pinned exactly, so its deprecation does not bite unnoticed.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.pipeline.backends import HEAD_EMBEDDING, HEAD_LANGID

#: Name of the DFT-basis buffer: its Conv stays FP32 when quantising (``int8.py``).
DFT_BUFFER = "dft_basis"
OUTPUT_NAMES = {HEAD_EMBEDDING: "emb", HEAD_LANGID: "log_post"}
#: Metadata keys written into the file.
META_HEAD = "voicesearch.head"
META_PRECISION = "voicesearch.precision"
OPSET = 17


class ExportError(Exception):
    """The model could not be exported or quantised; the message says why."""


@contextlib.contextmanager
def traceable_length_to_mask() -> Iterator[None]:
    """Replace SpeechBrain's ECAPA ``length_to_mask`` with a batch-size-agnostic twin while
    exporting; restored on exit, also on error. Numerically a no-op for any concurrent forward."""
    import speechbrain.lobes.models.ECAPA_TDNN as ecapa_module
    import torch

    original = ecapa_module.length_to_mask

    def length_to_mask(
        length: torch.Tensor,
        max_len: Any = None,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        if max_len is None:
            max_len = length.max().long().item()
        positions = torch.arange(max_len, device=length.device, dtype=length.dtype)
        mask = positions.unsqueeze(0) < length.unsqueeze(1)
        return mask.to(
            dtype=length.dtype if dtype is None else dtype,
            device=length.device if device is None else device,
        )

    ecapa_module.length_to_mask = length_to_mask
    try:
        yield
    finally:
        ecapa_module.length_to_mask = original


def _conv_fbank(fbank: Any) -> Any:
    """SpeechBrain's ``Fbank`` with ``torch.stft`` as a Conv1d over a DFT basis (same power
    spectrum: window zero-padded to n_fft and centred, ``center=True`` with zero padding,
    one-sided, unnormalised), then SpeechBrain's own filterbank module."""
    import torch

    stft = fbank.compute_STFT
    if not stft.center or stft.pad_mode != "constant":
        raise ExportError("the feature extractor's STFT must be centred with zero padding")
    if stft.normalized_stft or not stft.onesided:
        raise ExportError("the feature extractor's STFT must be one-sided and unnormalised")
    if getattr(fbank, "deltas", False) or getattr(fbank, "context", False):
        raise ExportError("feature deltas or a context window are not supported")

    class ConvFbank(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            n_fft, win_length = int(stft.n_fft), int(stft.win_length)
            self.hop = int(stft.hop_length)
            self.pad = n_fft // 2
            self.bins = n_fft // 2 + 1
            window = torch.zeros(n_fft, dtype=torch.float64)
            left = (n_fft - win_length) // 2  # torch.stft centres a shorter window
            window[left : left + win_length] = stft.window.double()
            n = torch.arange(n_fft, dtype=torch.float64)
            k = torch.arange(self.bins, dtype=torch.float64)
            angle = 2.0 * math.pi * k[:, None] * n[None, :] / n_fft
            basis = torch.cat([window * torch.cos(angle), -window * torch.sin(angle)], dim=0)
            self.register_buffer(DFT_BUFFER, basis.float().unsqueeze(1))  # [2*bins, 1, n_fft]
            self.compute_fbanks = fbank.compute_fbanks

        def forward(self, wav: torch.Tensor) -> torch.Tensor:
            padded = torch.nn.functional.pad(wav.unsqueeze(1), (self.pad, self.pad))
            spectrum = torch.nn.functional.conv1d(
                padded, getattr(self, DFT_BUFFER), stride=self.hop
            )
            real, imag = spectrum[:, : self.bins], spectrum[:, self.bins :]
            return self.compute_fbanks((real * real + imag * imag).transpose(1, 2))

    return ConvFbank()


def _graph(classifier: Any, head: str) -> Any:
    import torch

    mods = classifier.mods
    fbank = _conv_fbank(mods.compute_features)
    tail = mods.classifier if head == HEAD_LANGID else None

    class WaveToOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fbank = fbank
            self.norm = mods.mean_var_norm
            self.embedding = mods.embedding_model
            self.tail = tail

        def forward(self, wav: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
            embedding = self.embedding(self.norm(self.fbank(wav), lens), lens)  # [B, 1, D]
            if self.tail is not None:
                return self.tail(embedding).squeeze(1)  # [B, C] log-posteriors
            return embedding.squeeze(1)

    return WaveToOutput().eval()


def set_metadata(model: Any, **values: str) -> None:
    """Write ``voicesearch.<key>`` metadata properties into an ONNX ``ModelProto``."""
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in values.items():
        name = f"voicesearch.{key}"
        if name in existing:
            existing[name].value = value
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = name, value


def export_onnx(classifier: Any, path: Path, *, head: str) -> None:
    """Write the FP32 graph of ``classifier`` to ``path`` (see the module docstring)."""
    import onnx
    import torch

    if head not in OUTPUT_NAMES:
        raise ValueError(f"unknown head {head!r}")
    mods = classifier.mods
    needed = ["compute_features", "mean_var_norm", "embedding_model"]
    needed += ["classifier"] if head == HEAD_LANGID else []
    missing = [name for name in needed if getattr(mods, name, None) is None]
    if missing:
        raise ExportError(f"the model has no {', '.join(missing)} module: not an ECAPA layout")
    device = next(mods.embedding_model.parameters()).device
    module = _graph(classifier, head).to(device)
    # Batch >= 2 with unequal lengths: a tracer specialises sizes 0 and 1.
    generator = torch.Generator().manual_seed(0)
    wav = (0.1 * torch.randn(2, 8_000, generator=generator)).to(device)
    lens = torch.tensor([1.0, 0.8], device=device)
    output = OUTPUT_NAMES[head]
    with (
        traceable_length_to_mask(),
        torch.no_grad(),
        warnings.catch_warnings(),  # tracer warnings about Python values in SpeechBrain's code
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (wav, lens),
            str(path),
            input_names=["wav", "lens"],
            output_names=[output],
            dynamic_axes={
                "wav": {0: "batch", 1: "samples"},
                "lens": {0: "batch"},
                output: {0: "batch"},
            },
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        if first.HasField("dim_value"):
            raise ExportError(
                f"the export fixed the batch size of {value.name!r} to {first.dim_value}"
            )
    set_metadata(model, head=head, precision="fp32")
    onnx.save(model, str(path))
