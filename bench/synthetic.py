"""Benchmark-only bulk fill of a store: synthetic speakers with a profile each, no utterances.

Used by ``bench_asnorm``, ``bench_startup`` and the gallery/storage tests that need many
speakers quickly. It writes the same rows the service would (speaker, profile, one ``upsert``
change row each), so indexes, ``changes_since`` and ``iter_profiles`` see them like any other.
"""

from __future__ import annotations

import uuid

import numpy as np
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from storage.errors import InvalidEmbeddingError
from storage.models import OP_UPSERT, IndexChange, Profile, Speaker, utcnow
from storage.speakers import SpeakerStore
from storage.vectors import VECTOR_DTYPE


def bulk_insert_synthetic(
    store: SpeakerStore, space: str, vectors: np.ndarray, *, name_prefix: str = "synthetic"
) -> None:
    """One speaker + profile + "upsert" change row per vector, no utterances, via executemany in
    ONE transaction. For a million rows call it in chunks of ~100k to keep each transaction (and
    the WAL) moderate."""
    identity = store.model_identities.get(space)
    if identity is None:
        raise InvalidEmbeddingError(f"no model is loaded for space {space!r}")
    matrix = np.asarray(vectors)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise InvalidEmbeddingError(f"vectors must be (n, dim) with n > 0, got {matrix.shape}")
    if store.dims.get(space, matrix.shape[1]) != matrix.shape[1]:
        raise InvalidEmbeddingError(f"{space} vectors must have dimension {store.dims[space]}")
    matrix = np.ascontiguousarray(matrix, dtype=VECTOR_DTYPE)
    if not np.isfinite(matrix).all():
        raise InvalidEmbeddingError("vectors contain NaN or infinity")
    n = matrix.shape[0]
    token = uuid.uuid4().hex[:12]

    def tx(session: Session) -> None:
        conn = session.connection()
        now = utcnow()
        speaker_rows = [
            {
                "external_id": f"{name_prefix}_{token}_{i}",
                "name": f"{name_prefix} {i}",
                "meta": {},
                "created_at": now,
                "updated_at": now,
            }
            for i in range(n)
        ]
        if store.is_sqlite:
            # Explicit ids above both max(id) and sqlite_sequence (ids of deleted speakers
            # are never reused); we hold the write lock, so nobody else can take them.
            top = max(
                int(conn.scalar(select(func.coalesce(func.max(Speaker.id), 0))) or 0),
                int(
                    conn.scalar(
                        text(
                            "SELECT coalesce(max(seq), 0) FROM sqlite_sequence "
                            "WHERE name = 'speakers'"
                        )
                    )
                    or 0
                ),
            )
            ids = list(range(top + 1, top + 1 + n))
            for row, speaker_id in zip(speaker_rows, ids, strict=True):
                row["id"] = speaker_id
            conn.execute(insert(Speaker), speaker_rows)
        else:
            result = conn.execute(
                insert(Speaker).returning(Speaker.id, sort_by_parameter_order=True),
                speaker_rows,
            )
            ids = [int(r[0]) for r in result]
        blob_size = matrix.shape[1] * VECTOR_DTYPE.itemsize
        raw = matrix.tobytes()
        conn.execute(
            insert(Profile),
            [
                {
                    "speaker_id": speaker_id,
                    "space": space,
                    "vector": raw[i * blob_size : (i + 1) * blob_size],
                    "model_identity": identity,
                    "n_utterances": 0,
                    "updated_at": now,
                }
                for i, speaker_id in enumerate(ids)
            ],
        )
        conn.execute(
            insert(IndexChange),
            [
                {"space": space, "speaker_id": speaker_id, "op": OP_UPSERT, "created_at": now}
                for speaker_id in ids
            ],
        )

    store.write_transaction(tx)
