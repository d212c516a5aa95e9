"""The speech INT8 quantisation is calibrated on: shipped with the package, or the operator's.

The default is ``calibration_speech/``: ~24 s of speech synthesised with espeak-ng at development
time (``bench/make_calibration_speech.py``; its README says how), so no recording of anyone
ships with the project. ``VOICESEARCH_INT8_CALIBRATION_DIR`` (or ``voicesearch export
--calibration DIR``) points at a folder of the operator's own audio instead: audio like what the
service will hear calibrates a little better (measured: ~0.001 higher cosine to torch).

Every audio file directly in the folder is decoded by the service's own decoder (16 kHz mono),
cut into pieces of at most :data:`MAX_CLIP_S`, and used up to :data:`MAX_TOTAL_S` in all, in
file-name order. The set's :attr:`CalibrationSet.digest` (of the decoded samples) keys the INT8
export and enters the INT8 model identity: other calibration audio, other vectors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.core import errors
from service.pipeline.audio import TARGET_SAMPLE_RATE, decode_audio
from service.pipeline.backends.onnx_export import ExportError

DEFAULT_DIR = Path(__file__).resolve().parent / "calibration_speech"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".sph"}
MAX_CLIP_S = 10.0
MAX_TOTAL_S = 120.0
#: Pieces shorter than this are dropped (too short for ECAPA's statistics).
MIN_CLIP_S = 1.0


@dataclass(frozen=True)
class CalibrationSet:
    waves: tuple[np.ndarray, ...]
    digest: str  # sha256 hex of the decoded samples, in order
    source: str  # the folder, for the export's manifest

    @property
    def seconds(self) -> float:
        return sum(w.size for w in self.waves) / TARGET_SAMPLE_RATE


def load_calibration(directory: Path | None = None) -> CalibrationSet:
    """The calibration clips of ``directory`` (default: the shipped speech)."""
    folder = Path(directory).expanduser() if directory else DEFAULT_DIR
    if not folder.is_dir():
        raise ExportError(f"calibration folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    piece = int(MAX_CLIP_S * TARGET_SAMPLE_RATE)
    shortest = int(MIN_CLIP_S * TARGET_SAMPLE_RATE)
    budget = int(MAX_TOTAL_S * TARGET_SAMPLE_RATE)
    waves: list[np.ndarray] = []
    digest = hashlib.sha256()
    for path in files:
        try:
            samples = decode_audio(path.read_bytes(), max_duration_s=3600, min_duration_s=0).samples
        except errors.ServiceError as exc:
            raise ExportError(f"calibration file {path.name} cannot be used: {exc}") from exc
        for start in range(0, samples.size, piece):
            clip = np.ascontiguousarray(samples[start : start + piece], dtype=np.float32)
            if clip.size < shortest or budget <= 0:
                continue
            clip = clip[:budget]
            budget -= clip.size
            waves.append(clip)
            digest.update(clip.size.to_bytes(8, "little") + clip.tobytes())
    if not waves:
        raise ExportError(f"calibration folder {folder} holds no usable audio (>= {MIN_CLIP_S} s)")
    return CalibrationSet(tuple(waves), digest.hexdigest(), str(folder))
