"""Where a model's inference runs: one interface, three backends (``VOICESEARCH_BACKEND``).

Every ECAPA model the service uses (the speaker encoders and the language-ID model) is run by a
:class:`~service.pipeline.backends.runtime.ModelRuntime`: a batch of 16 kHz waveforms in, one row
of raw outputs per clip out (the embedding, or the language log-posteriors).
``service.pipeline.encoders`` and ``service.pipeline.language`` only see that interface.

* ``torch`` (``torch_backend.py``): SpeechBrain's own ``encode_batch`` / ``classify_batch``, the
  reference every other backend is tested against; the one that uses a CUDA GPU.
* ``onnx`` (``onnx_backend.py``): the same checkpoint exported to one ONNX graph
  (``onnx_export.py``: waveform → output, dynamic batch and length) run by ONNX Runtime. Its
  vectors equal torch's (cosine ≥ 0.99999), so it shares torch's model identity.
* ``onnx-int8``: that graph statically quantised to INT8 (``int8.py``), calibrated on speech that
  ships with the project or that the operator points at (``calibration.py``). Its vectors are
  close to torch's (cosine ≥ 0.995) but not equal: it has a model identity of its own.

Exports are built on first use, cached under the model cache directory and checked on every
load (``export_cache.py``); ``factory.py`` builds the runtime a setting asks for.
"""

from __future__ import annotations

BACKEND_TORCH = "torch"
BACKEND_ONNX = "onnx"
BACKEND_ONNX_INT8 = "onnx-int8"
BACKENDS = (BACKEND_TORCH, BACKEND_ONNX, BACKEND_ONNX_INT8)

#: What a model's graph ends in: a speaker embedding, or language-ID log-posteriors.
HEAD_EMBEDDING = "embedding"
HEAD_LANGID = "langid"
