"""All reads and writes of speakers, utterances, embeddings, profiles and the index change log.

Invariants this module keeps:

* Every public write is ONE database transaction: a speaker, its utterances, their embeddings,
  the recomputed profiles and the ``index_changes`` rows commit together or not at all.
* On SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (see ``storage.db``): writers
  queue on the write lock (``busy_timeout``) instead of deadlocking when upgrading a read lock,
  and "does this external_id exist?" followed by the INSERT is atomic across processes. If the
  lock is still not available, the whole transaction is retried a few times with backoff, then
  :class:`StorageBusyError` is raised.
* A speaker's profile in a space is the L2-normalised mean of its embeddings in that space that
  were made by the *currently loaded* model (``model_identities``); embeddings of another model
  are kept but ignored, so a model change never silently mixes two vector spaces.
* Every profile change appends an ``index_changes`` row in the same transaction; the in-memory
  FAISS indexes replay that log (``changes_since``).
"""

from __future__ import annotations

import enum
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    String,
    and_,
    case,
    cast,
    delete,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.audit import AuditRecord
from storage.audit import add as add_audit
from storage.db import SQLITE_BEGIN_OPTION
from storage.errors import (
    DuplicateExternalIdError,
    InvalidEmbeddingError,
    InvalidMetadataFilterError,
    SpeakerNotFoundError,
    StorageBusyError,
)
from storage.models import (
    OP_DELETE,
    OP_UPSERT,
    Embedding,
    IndexChange,
    IndexState,
    Profile,
    Speaker,
    Utterance,
    utcnow,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Vectors are stored as little-endian float32 bytes whatever the host's byte order.
VECTOR_DTYPE = np.dtype("<f4")


class Unset(enum.Enum):
    """Sentinel type for "argument not given" where ``None`` is a meaningful value."""

    UNSET = enum.auto()


UNSET = Unset.UNSET


@dataclass(frozen=True)
class UtteranceInput:
    sha256: str
    language: str | None
    language_confidence: float | None
    duration_s: float
    embeddings: dict[str, np.ndarray]  # space -> float32 (dim,) unit vector
    speech_s: float | None = None  # net speech (VAD); None: unknown, duration_s stands in


@dataclass(frozen=True)
class UtteranceRecord:
    id: int
    sha256: str
    language: str | None
    language_confidence: float | None
    duration_s: float
    created_at: datetime
    spaces: list[str]  # spaces holding an embedding of this clip made by the loaded model
    created: bool  # False when the clip was already stored for this speaker (idempotent)
    speech_s: float | None = None


@dataclass(frozen=True)
class SpeakerRecord:
    id: int
    external_id: str
    name: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    utterance_count: int
    spaces: list[str]  # spaces where the speaker has a profile made by the loaded model
    speech_s: float = 0.0  # net speech over all utterances (duration_s where unknown)


@dataclass(frozen=True)
class ChangeCursor:
    """Where the change log stands: the newest ``seq`` and every space's rebuild generation."""

    seq: int
    generations: dict[str, int]

    def generation(self, space: str) -> int:
        return self.generations.get(space, 0)


def encode_vector(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


def decode_vector(blob: bytes) -> np.ndarray:
    # Copy to native float32: frombuffer over bytes is read-only and may be little-endian-only.
    return np.frombuffer(blob, dtype=VECTOR_DTYPE).astype(np.float32)


def _is_busy(error: OperationalError) -> bool:
    message = str(error.orig).lower()
    return "locked" in message or "busy" in message


def _json_kind(json_type: ColumnElement[Any]) -> ColumnElement[Any]:
    """SQLite's json_type() with 'integer' and 'real' folded into 'number' (JSON has one)."""
    return case((json_type.in_(["integer", "real"]), literal("number")), else_=json_type)


def _normalise(mean: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(mean))
    # Unit inputs can only average to ~0 for pathological data; keep the (tiny) vector rather
    # than divide by zero. Its inner product with anything is then ~0 (never a match).
    if norm > 1e-12:
        mean = mean / norm
    return mean.astype(np.float32)


class SpeakerStore:
    #: Whole-transaction retries when SQLite stays locked beyond ``busy_timeout``.
    write_attempts = 5
    retry_base_delay_s = 0.05

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        model_identities: Mapping[str, str],
        *,
        dims: Mapping[str, int] | None = None,
        min_profile_speech_s: float = 0.0,
    ) -> None:
        """``model_identities``: space -> identity of the loaded model (embeddings are stored with
        it; profiles use only matching ones). ``dims`` (optional): space -> vector size, checked
        on every write; without it a write is still checked against the speaker's stored
        embeddings of the same model. ``min_profile_speech_s``: net speech a speaker's utterances
        must add up to before profiles (and so index entries) exist; below it the speaker is
        stored but incomplete (not searchable)."""
        self.min_profile_speech_s = float(min_profile_speech_s)
        self._sf = session_factory
        self.model_identities: dict[str, str] = dict(model_identities)
        self.dims: dict[str, int] = dict(dims or {})
        bind = session_factory.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError("session_factory must be bound to an Engine")
        self._engine: Engine = bind
        self._sqlite = bind.dialect.name == "sqlite"

    @property
    def session_factory(self) -> sessionmaker[Session]:
        return self._sf

    # ------------------------------------------------------------------ transactions
    def _run(self, fn: Callable[[Session], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction; retry the whole of it while SQLite reports busy."""
        attempts = self.write_attempts
        for attempt in range(1, attempts + 1):
            with self._sf() as session:
                try:
                    if write:
                        # Starts the transaction now, as BEGIN IMMEDIATE on SQLite.
                        session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                    result = fn(session)
                    if write:
                        session.commit()
                    return result
                except OperationalError as error:
                    session.rollback()
                    if not _is_busy(error):
                        raise
                    if attempt == attempts:
                        raise StorageBusyError(
                            f"database still locked after {attempts} attempts"
                        ) from error
                    delay = self.retry_base_delay_s * 2 ** (attempt - 1)
                    logger.warning("database busy (attempt %d/%d), retrying", attempt, attempts)
                    time.sleep(delay * (0.5 + random.random()))
                except BaseException:
                    session.rollback()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write(self, fn: Callable[[Session], T]) -> T:
        return self._run(fn, write=True)

    def _read(self, fn: Callable[[Session], T]) -> T:
        return self._run(fn, write=False)

    # ------------------------------------------------------------------ validation
    def _check_vector(self, space: str, vector: object, *, where: str) -> np.ndarray:
        if space not in self.model_identities:
            raise InvalidEmbeddingError(f"{where}: no model is loaded for space {space!r}")
        if not isinstance(vector, np.ndarray):
            raise InvalidEmbeddingError(f"{where}: embedding must be a numpy array")
        if vector.ndim != 1 or vector.shape[0] == 0:
            raise InvalidEmbeddingError(f"{where}: embedding must be 1-D, got shape {vector.shape}")
        if not np.issubdtype(vector.dtype, np.floating):
            raise InvalidEmbeddingError(
                f"{where}: embedding dtype must be float, got {vector.dtype}"
            )
        expected = self.dims.get(space)
        if expected is not None and vector.shape[0] != expected:
            raise InvalidEmbeddingError(
                f"{where}: {space} embedding has dimension {vector.shape[0]}, expected {expected}"
            )
        out = vector.astype(np.float32)
        if not np.isfinite(out).all():
            raise InvalidEmbeddingError(f"{where}: embedding contains NaN or infinity")
        return out

    def _prepare(self, utterances: Sequence[UtteranceInput]) -> list[UtteranceInput]:
        """Shape/dtype/finiteness checks that need no database. Dimension agreement with stored
        vectors is checked again inside the transaction (``_recompute_profiles``)."""
        prepared = []
        for position, utt in enumerate(utterances):
            where = f"utterance {position}"
            embeddings = {
                space: self._check_vector(space, vector, where=where)
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
                )
            )
        return prepared

    # ------------------------------------------------------------------ queries
    def _identity_condition(self, space_col: Any, identity_col: Any) -> ColumnElement[bool]:
        conditions = [
            and_(space_col == space, identity_col == identity)
            for space, identity in self.model_identities.items()
        ]
        return or_(*conditions) if conditions else false()

    def _record_select(self) -> Select[Any]:
        utterance_count = (
            select(func.count(Utterance.id))
            .where(Utterance.speaker_id == Speaker.id)
            .correlate(Speaker)
            .scalar_subquery()
        )
        spaces = (
            select(func.aggregate_strings(Profile.space, ","))
            .where(
                Profile.speaker_id == Speaker.id,
                self._identity_condition(Profile.space, Profile.model_identity),
            )
            .correlate(Speaker)
            .scalar_subquery()
        )
        speech = (
            select(
                func.coalesce(
                    func.sum(func.coalesce(Utterance.speech_s, Utterance.duration_s)), 0.0
                )
            )
            .where(Utterance.speaker_id == Speaker.id)
            .correlate(Speaker)
            .scalar_subquery()
        )
        return select(
            Speaker, utterance_count.label("n"), spaces.label("spaces"), speech.label("speech")
        )

    @staticmethod
    def _to_record(
        speaker: Speaker, n: int | None, spaces: str | None, speech: float | None = None
    ) -> SpeakerRecord:
        return SpeakerRecord(
            speech_s=float(speech or 0.0),
            id=speaker.id,
            external_id=speaker.external_id,
            name=speaker.name,
            metadata=dict(speaker.meta or {}),
            created_at=speaker.created_at,
            updated_at=speaker.updated_at,
            utterance_count=int(n or 0),
            spaces=sorted(spaces.split(",")) if spaces else [],
        )

    def _record_by_id(self, session: Session, speaker_id: int) -> SpeakerRecord:
        row = session.execute(self._record_select().where(Speaker.id == speaker_id)).one()
        return self._to_record(row[0], row[1], row[2], row[3])

    @staticmethod
    def _speaker_id(session: Session, external_id: str) -> int:
        speaker_id = session.scalar(select(Speaker.id).where(Speaker.external_id == external_id))
        if speaker_id is None:
            raise SpeakerNotFoundError(external_id)
        return speaker_id

    def _utterance_records(
        self, session: Session, utterance_ids: Sequence[int]
    ) -> dict[int, UtteranceRecord]:
        if not utterance_ids:
            return {}
        spaces = (
            select(func.aggregate_strings(Embedding.space, ","))
            .where(
                Embedding.utterance_id == Utterance.id,
                self._identity_condition(Embedding.space, Embedding.model_identity),
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

    # ------------------------------------------------------------------ write helpers
    def _store_utterances(
        self, session: Session, speaker_id: int, utterances: Sequence[UtteranceInput], now: datetime
    ) -> tuple[list[UtteranceRecord], set[str]]:
        """Insert new clips and their embeddings; returns the records and the spaces whose
        profile must be recomputed. A clip already stored for this speaker (same sha256) is not
        duplicated; its embedding is only (re)written when missing or made by another model."""
        shas = sorted({u.sha256 for u in utterances})
        stored: dict[str, Utterance] = {
            u.sha256: u
            for u in session.scalars(
                select(Utterance).where(
                    Utterance.speaker_id == speaker_id, Utterance.sha256.in_(shas)
                )
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
            created = utt is None
            if utt is None:
                utt = Utterance(
                    speaker_id=speaker_id,
                    language=utt_in.language,
                    language_confidence=utt_in.language_confidence,
                    duration_s=utt_in.duration_s,
                    sha256=utt_in.sha256,
                    speech_s=utt_in.speech_s,
                    created_at=now,
                )
                session.add(utt)
                session.flush()  # need utt.id for the embeddings
                stored[utt_in.sha256] = utt
            for space, vector in utt_in.embeddings.items():
                identity = self.model_identities[space]
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
        by_id = self._utterance_records(session, [utt_id for utt_id, _ in order])
        records = [
            by_id[utt_id] if created else replace(by_id[utt_id], created=False)
            for utt_id, created in order
        ]
        return records, touched

    def _recompute_profiles(
        self, session: Session, speaker_id: int, spaces: set[str], now: datetime
    ) -> None:
        """Recompute the speaker's profile in ``spaces`` and log one change row per space.

        A speaker whose utterances hold less net speech than ``min_profile_speech_s`` gets no
        profile (an incomplete enrollment): it is logged as a delete, so every index drops it,
        and the write that completes it is logged as an upsert like any other."""
        if not spaces:
            return
        if self.min_profile_speech_s > 0 and (
            self._speech_total(session, speaker_id) < self.min_profile_speech_s
        ):
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
                self._identity_condition(Embedding.space, Embedding.model_identity),
            )
        ).all()
        grouped: dict[str, list[tuple[bytes, int]]] = {space: [] for space in spaces}
        for space, blob, dim in rows:
            grouped[space].append((blob, dim))

        for space in sorted(spaces):
            identity = self.model_identities[space]
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
            session.add(
                IndexChange(space=space, speaker_id=speaker_id, op=OP_UPSERT, created_at=now)
            )
        session.flush()

    @staticmethod
    def _speech_total(session: Session, speaker_id: int) -> float:
        return float(
            session.scalar(
                select(
                    func.coalesce(
                        func.sum(func.coalesce(Utterance.speech_s, Utterance.duration_s)), 0.0
                    )
                ).where(Utterance.speaker_id == speaker_id)
            )
            or 0.0
        )

    def _external_id_exists(self, external_id: str) -> bool:
        return self._read(
            lambda s: (
                s.scalar(select(Speaker.id).where(Speaker.external_id == external_id)) is not None
            )
        )

    # ------------------------------------------------------------------ public writes
    def create_speaker(
        self,
        *,
        external_id: str | None,
        name: str | None,
        metadata: dict[str, Any] | None,
        utterances: list[UtteranceInput],
        audit: AuditRecord | None = None,
    ) -> tuple[SpeakerRecord, list[UtteranceRecord]]:
        prepared = self._prepare(utterances)
        ext = external_id if external_id is not None else f"spk_{uuid.uuid4().hex}"
        meta = dict(metadata or {})

        def tx(session: Session) -> tuple[SpeakerRecord, list[UtteranceRecord]]:
            # Under BEGIN IMMEDIATE no other writer can insert between this check and ours.
            if session.scalar(select(Speaker.id).where(Speaker.external_id == ext)) is not None:
                raise DuplicateExternalIdError(ext)
            now = utcnow()
            speaker = Speaker(external_id=ext, name=name, meta=meta, created_at=now, updated_at=now)
            session.add(speaker)
            session.flush()
            records, touched = self._store_utterances(session, speaker.id, prepared, now)
            self._recompute_profiles(session, speaker.id, touched, now)
            add_audit(session, audit, ext)
            return self._record_by_id(session, speaker.id), records

        try:
            return self._write(tx)
        except IntegrityError as error:
            # Databases without an up-front write lock (not SQLite) report the race here.
            if self._external_id_exists(ext):
                raise DuplicateExternalIdError(ext) from error
            raise

    def add_utterances(
        self,
        external_id: str,
        utterances: list[UtteranceInput],
        audit: AuditRecord | None = None,
    ) -> tuple[SpeakerRecord, list[UtteranceRecord]]:
        prepared = self._prepare(utterances)

        def tx(session: Session) -> tuple[SpeakerRecord, list[UtteranceRecord]]:
            speaker_id = self._speaker_id(session, external_id)
            now = utcnow()
            records, touched = self._store_utterances(session, speaker_id, prepared, now)
            self._recompute_profiles(session, speaker_id, touched, now)
            if touched or any(r.created for r in records):
                speaker = session.get_one(Speaker, speaker_id)
                speaker.updated_at = now
                session.flush()
            add_audit(session, audit, external_id)
            return self._record_by_id(session, speaker_id), records

        return self._write(tx)

    def update(
        self,
        external_id: str,
        *,
        name: str | Unset | None = UNSET,
        metadata: dict[str, Any] | Unset = UNSET,
        audit: AuditRecord | None = None,
    ) -> SpeakerRecord:
        """Change name and/or replace metadata (whole object). Profiles are not touched."""

        def tx(session: Session) -> SpeakerRecord:
            speaker_id = self._speaker_id(session, external_id)
            speaker = session.get_one(Speaker, speaker_id)
            if not isinstance(name, Unset):
                speaker.name = name
            if not isinstance(metadata, Unset):
                speaker.meta = dict(metadata)
            speaker.updated_at = utcnow()
            session.flush()
            add_audit(session, audit, external_id)
            return self._record_by_id(session, speaker_id)

        return self._write(tx)

    def delete(self, external_id: str, audit: AuditRecord | None = None) -> None:
        def tx(session: Session) -> None:
            speaker_id = self._speaker_id(session, external_id)
            spaces = set(
                session.scalars(select(Profile.space).where(Profile.speaker_id == speaker_id))
            )
            spaces |= set(
                session.scalars(
                    select(Embedding.space)
                    .join(Utterance, Utterance.id == Embedding.utterance_id)
                    .where(Utterance.speaker_id == speaker_id)
                    .distinct()
                )
            )
            now = utcnow()
            for space in sorted(spaces):
                session.add(
                    IndexChange(space=space, speaker_id=speaker_id, op=OP_DELETE, created_at=now)
                )
            # Explicit deletes in child-to-parent order: correct even on a connection where
            # SQLite's foreign_keys pragma (and so ON DELETE CASCADE) is off.
            utterance_ids = select(Utterance.id).where(Utterance.speaker_id == speaker_id)
            session.execute(delete(Embedding).where(Embedding.utterance_id.in_(utterance_ids)))
            session.execute(delete(Utterance).where(Utterance.speaker_id == speaker_id))
            session.execute(delete(Profile).where(Profile.speaker_id == speaker_id))
            session.execute(delete(Speaker).where(Speaker.id == speaker_id))
            add_audit(session, audit, external_id)

        self._write(tx)

    # ------------------------------------------------------------------ public reads
    def get(self, external_id: str) -> SpeakerRecord:
        def tx(session: Session) -> SpeakerRecord:
            row = session.execute(
                self._record_select().where(Speaker.external_id == external_id)
            ).one_or_none()
            if row is None:
                raise SpeakerNotFoundError(external_id)
            return self._to_record(row[0], row[1], row[2], row[3])

        return self._read(tx)

    def list_utterances(self, external_id: str) -> list[UtteranceRecord]:
        def tx(session: Session) -> list[UtteranceRecord]:
            speaker_id = self._speaker_id(session, external_id)
            ids = list(
                session.scalars(
                    select(Utterance.id)
                    .where(Utterance.speaker_id == speaker_id)
                    .order_by(Utterance.id)
                )
            )
            records = self._utterance_records(session, ids)
            return [records[i] for i in ids]

        return self._read(tx)

    def summaries(self, ids: list[int]) -> dict[int, SpeakerRecord]:
        """Records for search hits, in one query. Unknown ids (deleted meanwhile) are absent."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}

        def tx(session: Session) -> dict[int, SpeakerRecord]:
            rows = session.execute(self._record_select().where(Speaker.id.in_(wanted))).all()
            return {row[0].id: self._to_record(*row) for row in rows}

        return self._read(tx)

    def _metadata_condition(self, key: str, value: Any) -> ColumnElement[bool]:
        if not key or '"' in key or "\\" in key:
            raise InvalidMetadataFilterError(f"unsupported metadata filter key {key!r}")
        if self._sqlite:
            # JSON equality in SQLite: same JSON kind (so true != 1 and "1" != 1, but 1 == 1.0)
            # and same value; json_extract turns objects/arrays into canonical minified text.
            # IS is SQLite's null-safe '=' (a JSON null extracts to SQL NULL).
            path = f'$."{key}"'
            document = literal(json.dumps(value), String)
            column = Speaker.meta
            return and_(
                _json_kind(func.json_type(column, path)).is_not_distinct_from(
                    _json_kind(func.json_type(document, "$"))
                ),
                func.json_extract(column, path).is_not_distinct_from(
                    func.json_extract(document, "$")
                ),
            )
        # Other databases: SQLAlchemy's portable JSON index operators, scalars only.
        element = Speaker.meta[key]
        if value is None:
            return element.as_json().is_(None) | (element.as_string().is_(None))
        if isinstance(value, bool):
            return element.as_boolean() == value
        if isinstance(value, int):
            return element.as_integer() == value
        if isinstance(value, float):
            return element.as_float() == value
        if isinstance(value, str):
            return element.as_string() == value
        raise InvalidMetadataFilterError(
            f"metadata filter on {key!r}: only scalar values are supported on this database"
        )

    def list(
        self,
        *,
        offset: int,
        limit: int,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[list[SpeakerRecord], int]:
        """A page of speakers in id order plus the total matching the filters.

        ``name``: case-insensitive substring. ``metadata``: every key must equal (JSON
        equality) the given value."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        conditions: list[ColumnElement[bool]] = []
        if name:
            conditions.append(Speaker.name.icontains(name, autoescape=True))
        for key, value in (metadata or {}).items():
            conditions.append(self._metadata_condition(key, value))

        def tx(session: Session) -> tuple[list[SpeakerRecord], int]:
            total = session.scalar(select(func.count(Speaker.id)).where(*conditions)) or 0
            rows = session.execute(
                self._record_select()
                .where(*conditions)
                .order_by(Speaker.id)
                .offset(offset)
                .limit(limit)
            ).all()
            return [self._to_record(*r) for r in rows], int(total)

        return self._read(tx)

    # ------------------------------------------------------------------ index-facing
    def change_cursor(self) -> ChangeCursor:
        """Newest change ``seq`` and every space's generation, in ONE indexed query (runs before
        every search, so it stays on Core and a bare connection)."""
        query = union_all(
            select(
                cast(null(), String).label("space"),
                func.coalesce(func.max(IndexChange.seq), 0).label("value"),
            ),
            select(IndexState.space, IndexState.generation),
        )

        def run() -> ChangeCursor:
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
            seq = 0
            generations: dict[str, int] = {}
            for space, value in rows:
                if space is None:
                    seq = int(value or 0)
                else:
                    generations[space] = int(value)
            return ChangeCursor(seq=seq, generations=generations)

        return self._retry_core(run)

    def _retry_core(self, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.write_attempts + 1):
            try:
                return fn()
            except OperationalError as error:
                if not _is_busy(error):
                    raise
                if attempt == self.write_attempts:
                    raise StorageBusyError("database still locked") from error
                time.sleep(self.retry_base_delay_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def pending_changes(self, space: str, seq: int) -> int:
        """How many change rows of ``space`` are newer than ``seq`` (decides replay vs rebuild)."""

        def tx(session: Session) -> int:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(IndexChange)
                    .where(IndexChange.space == space, IndexChange.seq > seq)
                )
                or 0
            )

        return self._read(tx)

    def changes_since(
        self, space: str, seq: int, *, limit: int | None = None
    ) -> tuple[int, list[tuple[int, np.ndarray | None]]]:
        """Changes of ``space`` after ``seq``, compacted to each speaker's *current* state.

        Returns ``(new_seq, [(speaker_id, profile or None)])``: ``None`` means "not in the index"
        (deleted, or no profile made by the loaded model). ``new_seq`` is the global newest seq
        as of this read (so a space with no changes still moves forward), or — when ``limit``
        cut the window — the seq of the last change row included; call again from there.
        Correctness relies on SQLite's single writer: seqs become visible in commit order.
        """
        identity = self.model_identities.get(space)

        def tx(session: Session) -> tuple[int, list[tuple[int, np.ndarray | None]]]:
            upper = int(session.scalar(select(func.coalesce(func.max(IndexChange.seq), 0))) or 0)
            if limit is not None:
                cut = session.scalar(
                    select(IndexChange.seq)
                    .where(IndexChange.space == space, IndexChange.seq > seq)
                    .order_by(IndexChange.seq)
                    .offset(limit - 1)
                    .limit(1)
                )
                if cut is not None and cut < upper:
                    upper = int(cut)
            if upper <= seq:
                return max(seq, upper), []
            changed = (
                select(IndexChange.speaker_id)
                .where(
                    IndexChange.space == space,
                    IndexChange.seq > seq,
                    IndexChange.seq <= upper,
                )
                .distinct()
                .subquery()
            )
            rows = session.execute(
                select(changed.c.speaker_id, Profile.vector, Profile.model_identity)
                .select_from(changed)
                .outerjoin(
                    Profile,
                    and_(Profile.speaker_id == changed.c.speaker_id, Profile.space == space),
                )
                .order_by(changed.c.speaker_id)
            ).all()
            out: list[tuple[int, np.ndarray | None]] = []
            for speaker_id, blob, model_identity in rows:
                usable = blob is not None and model_identity == identity
                out.append((int(speaker_id), decode_vector(blob) if usable else None))
            return upper, out

        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1")
        return self._read(tx)

    def iter_profiles(
        self, space: str, batch_size: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every profile of ``space`` made by the loaded model, in id order, as batches of
        ``(ids int64 (n,), vectors float32 (n, dim))``. Each batch is its own short read
        (keyset paging), so a long scan never pins an old WAL snapshot; callers that need a
        consistent picture take ``change_cursor()`` first and replay changes after it."""
        identity = self.model_identities.get(space)
        if identity is None:
            return
        last_id = -1
        while True:
            rows = self._read(
                lambda s, after=last_id: s.execute(
                    select(Profile.speaker_id, Profile.vector)
                    .where(
                        Profile.space == space,
                        Profile.model_identity == identity,
                        Profile.speaker_id > after,
                    )
                    .order_by(Profile.speaker_id)
                    .limit(batch_size)
                ).all()
            )
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            width = len(rows[0][1])
            if any(len(r[1]) != width for r in rows):
                raise InvalidEmbeddingError(f"{space} profiles disagree on dimension")
            vectors = (
                np.frombuffer(b"".join(r[1] for r in rows), dtype=VECTOR_DTYPE)
                .reshape(len(rows), width // VECTOR_DTYPE.itemsize)
                .astype(np.float32)
            )
            yield ids, vectors
            last_id = int(ids[-1])
            if len(rows) < batch_size:
                return

    def profile_count(self, space: str) -> int:
        identity = self.model_identities.get(space)
        if identity is None:
            return 0
        return self._read(
            lambda s: int(
                s.scalar(
                    select(func.count())
                    .select_from(Profile)
                    .where(Profile.space == space, Profile.model_identity == identity)
                )
                or 0
            )
        )

    def bump_generation(self, space: str) -> int:
        def tx(session: Session) -> int:
            state = session.get(IndexState, space)
            if state is None:
                state = IndexState(space=space, generation=1)
                session.add(state)
            else:
                state.generation += 1
            session.flush()
            return state.generation

        return self._write(tx)

    def bulk_insert_synthetic(
        self, space: str, vectors: np.ndarray, *, name_prefix: str = "synthetic"
    ) -> None:
        """Benchmark fast path: one speaker + profile + "upsert" change row per vector, no
        utterances, via executemany in ONE transaction. For a million rows call it in chunks of
        ~100k to keep each transaction (and the WAL) moderate."""
        identity = self.model_identities.get(space)
        if identity is None:
            raise InvalidEmbeddingError(f"no model is loaded for space {space!r}")
        matrix = np.asarray(vectors)
        if matrix.ndim != 2 or matrix.shape[0] == 0:
            raise InvalidEmbeddingError(f"vectors must be (n, dim) with n > 0, got {matrix.shape}")
        if self.dims.get(space, matrix.shape[1]) != matrix.shape[1]:
            raise InvalidEmbeddingError(f"{space} vectors must have dimension {self.dims[space]}")
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
            if self._sqlite:
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

        self._write(tx)
