"""Utterances, their embeddings, and the per-space profiles computed from them.

Functions here run inside a transaction the caller (``storage.speakers.SpeakerStore``) opened.
A speaker's profile in a space is the L2-normalised mean of its embeddings in that space that
were made by the *currently loaded* model (``model_identities``); embeddings of another model
are kept but ignored, so a model change never silently mixes two vector spaces. Every profile
change appends an ``index_changes`` row (the change log the indexes replay).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.orm import Session

from storage.errors import InvalidEmbeddingError
from storage.models import OP_DELETE, OP_UPSERT, Embedding, IndexChange, Profile, Utterance
from storage.records import UtteranceInput, UtteranceRecord
from storage.vectors import decode_vector, encode_vector


def _normalise(mean: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(mean))
    # Unit inputs can only average to ~0 for pathological data; keep the (tiny) vector rather
    # than divide by zero. Its inner product with anything is then ~0 (never a match).
    if norm > 1e-12:
        mean = mean / norm
    return mean.astype(np.float32)


def identity_condition(
    model_identities: Mapping[str, str], space_col: Any, identity_col: Any
) -> ColumnElement[bool]:
    """Rows (embeddings or profiles) made by the model loaded for their space."""
    conditions = [
        and_(space_col == space, identity_col == identity)
        for space, identity in model_identities.items()
    ]
    return or_(*conditions) if conditions else false()


# ------------------------------------------------------------------ validation
def _check_vector(
    model_identities: Mapping[str, str],
    dims: Mapping[str, int],
    space: str,
    vector: object,
    *,
    where: str,
) -> np.ndarray:
    if space not in model_identities:
        raise InvalidEmbeddingError(f"{where}: no model is loaded for space {space!r}")
    if not isinstance(vector, np.ndarray):
        raise InvalidEmbeddingError(f"{where}: embedding must be a numpy array")
    if vector.ndim != 1 or vector.shape[0] == 0:
        raise InvalidEmbeddingError(f"{where}: embedding must be 1-D, got shape {vector.shape}")
    if not np.issubdtype(vector.dtype, np.floating):
        raise InvalidEmbeddingError(f"{where}: embedding dtype must be float, got {vector.dtype}")
    expected = dims.get(space)
    if expected is not None and vector.shape[0] != expected:
        raise InvalidEmbeddingError(
            f"{where}: {space} embedding has dimension {vector.shape[0]}, expected {expected}"
        )
    out = vector.astype(np.float32)
    if not np.isfinite(out).all():
        raise InvalidEmbeddingError(f"{where}: embedding contains NaN or infinity")
    return out


def prepare_utterances(
    utterances: Sequence[UtteranceInput],
    model_identities: Mapping[str, str],
    dims: Mapping[str, int],
) -> list[UtteranceInput]:
    """Shape/dtype/finiteness checks that need no database. Dimension agreement with stored
    vectors is checked again inside the transaction (:func:`recompute_profiles`)."""
    prepared = []
    for position, utt in enumerate(utterances):
        where = f"utterance {position}"
        embeddings = {
            space: _check_vector(model_identities, dims, space, vector, where=where)
            for space, vector in utt.embeddings.items()
        }
        prepared.append(
            UtteranceInput(
                sha256=utt.sha256,
                language=utt.language,
                language_confidence=utt.language_confidence,
                duration_s=float(utt.duration_s),
                embeddings=embeddings,
                speech_s=None if utt.speech_s is None else float(utt.speech_s),
                legacy_sha256=utt.legacy_sha256,
                source_sample_rate=utt.source_sample_rate,
            )
        )
    return prepared


# ------------------------------------------------------------------ reads
def utterance_records(
    session: Session, utterance_ids: Sequence[int], model_identities: Mapping[str, str]
) -> dict[int, UtteranceRecord]:
    if not utterance_ids:
        return {}
    spaces = (
        select(func.aggregate_strings(Embedding.space, ","))
        .where(
            Embedding.utterance_id == Utterance.id,
            identity_condition(model_identities, Embedding.space, Embedding.model_identity),
        )
        .correlate(Utterance)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Utterance, spaces).where(Utterance.id.in_(list(utterance_ids)))
    ).all()
    return {
        utt.id: UtteranceRecord(
            id=utt.id,
            sha256=utt.sha256,
            language=utt.language,
            language_confidence=utt.language_confidence,
            duration_s=utt.duration_s,
            created_at=utt.created_at,
            spaces=sorted(space_csv.split(",")) if space_csv else [],
            created=True,
            speech_s=utt.speech_s,
        )
        for utt, space_csv in rows
    }


def net_speech_sum() -> ColumnElement[float]:
    """SQL: the net speech of a set of utterances (``duration_s`` where it is unknown). The one
    definition the enrollment floor, speaker records and the start-up floor check share."""
    return func.sum(func.coalesce(Utterance.speech_s, Utterance.duration_s))


def speech_total(session: Session, speaker_id: int) -> float:
    """Net speech over the speaker's utterances (``duration_s`` where it is unknown)."""
    return float(
        session.scalar(
            select(func.coalesce(net_speech_sum(), 0.0)).where(Utterance.speaker_id == speaker_id)
        )
        or 0.0
    )


# ------------------------------------------------------------------ writes
def store_utterances(
    session: Session,
    speaker_id: int,
    utterances: Sequence[UtteranceInput],
    now: datetime,
    model_identities: Mapping[str, str],
) -> tuple[list[UtteranceRecord], set[str]]:
    """Insert new clips and their embeddings; returns the records and the spaces whose
    profile must be recomputed. A clip already stored for this speaker (same sha256, or a row
    of an older version with its ``legacy_sha256``) is not duplicated; its embedding is only
    (re)written when missing or made by another model."""
    shas = sorted(
        {u.sha256 for u in utterances}
        | {u.legacy_sha256 for u in utterances if u.legacy_sha256 is not None}
    )
    stored: dict[str, Utterance] = {
        u.sha256: u
        for u in session.scalars(
            select(Utterance).where(Utterance.speaker_id == speaker_id, Utterance.sha256.in_(shas))
        )
    }
    stored_embeddings: dict[tuple[int, str], Embedding] = {}
    if stored:
        for emb in session.scalars(
            select(Embedding).where(Embedding.utterance_id.in_([u.id for u in stored.values()]))
        ):
            stored_embeddings[(emb.utterance_id, emb.space)] = emb

    touched: set[str] = set()
    order: list[tuple[int, bool]] = []
    for utt_in in utterances:
        utt = stored.get(utt_in.sha256)
        if utt is None and utt_in.legacy_sha256 is not None:
            utt = stored.get(utt_in.legacy_sha256)
        created = utt is None
        if utt is None:
            utt = Utterance(
                speaker_id=speaker_id,
                language=utt_in.language,
                language_confidence=utt_in.language_confidence,
                duration_s=utt_in.duration_s,
                sha256=utt_in.sha256,
                speech_s=utt_in.speech_s,
                source_sample_rate=utt_in.source_sample_rate,
                created_at=now,
            )
            session.add(utt)
            session.flush()  # need utt.id for the embeddings
            stored[utt_in.sha256] = utt
        if utt.source_sample_rate is None and utt_in.source_sample_rate is not None:
            # A clip stored before migration 0006, uploaded again: its rate is known now.
            utt.source_sample_rate = utt_in.source_sample_rate
        for space, vector in utt_in.embeddings.items():
            identity = model_identities[space]
            emb = stored_embeddings.get((utt.id, space))
            if emb is None:
                emb = Embedding(
                    utterance_id=utt.id,
                    space=space,
                    vector=encode_vector(vector),
                    dim=int(vector.shape[0]),
                    model_identity=identity,
                )
                session.add(emb)
                stored_embeddings[(utt.id, space)] = emb
                touched.add(space)
            elif emb.model_identity != identity:
                # Same clip re-uploaded after a model change: re-embed it in place.
                emb.vector = encode_vector(vector)
                emb.dim = int(vector.shape[0])
                emb.model_identity = identity
                touched.add(space)
        order.append((utt.id, created))
    session.flush()
    by_id = utterance_records(session, [utt_id for utt_id, _ in order], model_identities)
    records = [
        by_id[utt_id] if created else replace(by_id[utt_id], created=False)
        for utt_id, created in order
    ]
    return records, touched


def recompute_profiles(
    session: Session,
    speaker_id: int,
    spaces: set[str],
    now: datetime,
    model_identities: Mapping[str, str],
    min_profile_speech_s: float,
) -> None:
    """Recompute the speaker's profile in ``spaces`` and log one change row per space.

    A speaker whose utterances hold less net speech than ``min_profile_speech_s`` gets no
    profile (an incomplete enrollment): it is logged as a delete, so every index drops it,
    and the write that completes it is logged as an upsert like any other."""
    if not spaces:
        return
    if min_profile_speech_s > 0 and speech_total(session, speaker_id) < min_profile_speech_s:
        for space in sorted(spaces):
            profile = session.get(Profile, (speaker_id, space))
            if profile is not None:
                session.delete(profile)
            session.add(
                IndexChange(space=space, speaker_id=speaker_id, op=OP_DELETE, created_at=now)
            )
        session.flush()
        return
    rows = session.execute(
        select(Embedding.space, Embedding.vector, Embedding.dim)
        .join(Utterance, Utterance.id == Embedding.utterance_id)
        .where(
            Utterance.speaker_id == speaker_id,
            Embedding.space.in_(sorted(spaces)),
            identity_condition(model_identities, Embedding.space, Embedding.model_identity),
        )
    ).all()
    grouped: dict[str, list[tuple[bytes, int]]] = {space: [] for space in spaces}
    for space, blob, dim in rows:
        grouped[space].append((blob, dim))

    for space in sorted(spaces):
        identity = model_identities[space]
        profile = session.get(Profile, (speaker_id, space))
        entries = grouped[space]
        if not entries:
            if profile is not None:
                session.delete(profile)
            session.add(
                IndexChange(space=space, speaker_id=speaker_id, op=OP_DELETE, created_at=now)
            )
            continue
        dims = {dim for _, dim in entries}
        if len(dims) != 1:
            raise InvalidEmbeddingError(
                f"{space} embeddings of one model disagree on dimension: {sorted(dims)}"
            )
        matrix = np.stack([decode_vector(blob) for blob, _ in entries])
        vector = _normalise(matrix.mean(axis=0, dtype=np.float64))
        if profile is None:
            session.add(
                Profile(
                    speaker_id=speaker_id,
                    space=space,
                    vector=encode_vector(vector),
                    model_identity=identity,
                    n_utterances=len(entries),
                    updated_at=now,
                )
            )
        else:
            profile.vector = encode_vector(vector)
            profile.model_identity = identity
            profile.n_utterances = len(entries)
            profile.updated_at = now
        session.add(IndexChange(space=space, speaker_id=speaker_id, op=OP_UPSERT, created_at=now))
    session.flush()
