"""How vectors are stored: little-endian float32 bytes, whatever the host's byte order."""

from __future__ import annotations

import numpy as np

VECTOR_DTYPE = np.dtype("<f4")


def encode_vector(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


def decode_vector(blob: bytes) -> np.ndarray:
    # Copy to native float32: frombuffer over bytes is read-only and may be little-endian-only.
    return np.frombuffer(blob, dtype=VECTOR_DTYPE).astype(np.float32)
