"""Speakers: the one writer of speaker data, and its reads.

Invariants this module keeps:

* Every public write is ONE database transaction (``storage.tx``): a speaker, its utterances,
  their embeddings, the recomputed profiles (``storage.profiles``), the ``index_changes`` rows
  and the audit row commit together or not at all.
* "Does this external_id exist?" and the INSERT run under SQLite's write lock (``BEGIN
  IMMEDIATE``), so they are atomic across processes.
* :class:`SpeakerStore` is a :class:`~storage.change_log.ChangeLog`: what it writes, the
  indexes read back through that narrower interface.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage.audit import AuditRecord
from storage.audit import add as add_audit
from storage.change_log import ChangeLog
from storage.errors import DuplicateExternalIdError, SpeakerNotFoundError
from storage.metadata import readable_metadata, storable_metadata
from storage.metadata_filter import metadata_condition
from storage.models import OP_DELETE, Embedding, IndexChange, Profile, Speaker, Utterance, utcnow
from storage.profile_floor import FloorChanges, apply_profile_floor
from storage.profiles import (
    identity_condition,
    net_speech_sum,
    prepare_utterances,
    recompute_profiles,
    store_utterances,
    utterance_records,
)
from storage.records import UNSET, SpeakerRecord, Unset, UtteranceInput, UtteranceRecord


def _json_text(value: Any) -> str:
    # allow_nan: a row written by an older version may hold NaN; it compares as different.
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


class SpeakerStore(ChangeLog):
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
        super().__init__(session_factory, model_identities)
        self.dims: dict[str, int] = dict(dims or {})

    # ------------------------------------------------------------------ queries
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
                identity_condition(self.model_identities, Profile.space, Profile.model_identity),
            )
            .correlate(Speaker)
            .scalar_subquery()
        )
        speech = (
            select(func.coalesce(net_speech_sum(), 0.0))
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
            metadata=readable_metadata(speaker.meta),
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

    def _recompute_profiles(
        self, session: Session, speaker_id: int, spaces: set[str], now: datetime
    ) -> None:
        recompute_profiles(
            session, speaker_id, spaces, now, self.model_identities, self.min_profile_speech_s
        )

    def _external_id_exists(self, external_id: str) -> bool:
        return self.read_transaction(
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
        prepared = prepare_utterances(utterances, self.model_identities, self.dims)
        ext = external_id if external_id is not None else f"spk_{uuid.uuid4().hex}"
        meta = storable_metadata(metadata)

        def tx(session: Session) -> tuple[SpeakerRecord, list[UtteranceRecord]]:
            # Under BEGIN IMMEDIATE no other writer can insert between this check and ours.
            if session.scalar(select(Speaker.id).where(Speaker.external_id == ext)) is not None:
                raise DuplicateExternalIdError(ext)
            now = utcnow()
            speaker = Speaker(external_id=ext, name=name, meta=meta, created_at=now, updated_at=now)
            session.add(speaker)
            session.flush()
            records, touched = store_utterances(
                session, speaker.id, prepared, now, self.model_identities
            )
            self._recompute_profiles(session, speaker.id, touched, now)
            add_audit(session, audit, ext)
            return self._record_by_id(session, speaker.id), records

        try:
            return self.write_transaction(tx)
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
        prepared = prepare_utterances(utterances, self.model_identities, self.dims)

        def tx(session: Session) -> tuple[SpeakerRecord, list[UtteranceRecord]]:
            speaker_id = self._speaker_id(session, external_id)
            now = utcnow()
            records, touched = store_utterances(
                session, speaker_id, prepared, now, self.model_identities
            )
            self._recompute_profiles(session, speaker_id, touched, now)
            if touched or any(r.created for r in records):
                speaker = session.get_one(Speaker, speaker_id)
                speaker.updated_at = now
                session.flush()
            add_audit(session, audit, external_id)
            return self._record_by_id(session, speaker_id), records

        return self.write_transaction(tx)

    def update(
        self,
        external_id: str,
        *,
        name: str | Unset | None = UNSET,
        metadata: dict[str, Any] | Unset = UNSET,
        audit: AuditRecord | None = None,
    ) -> SpeakerRecord:
        """Change name and/or replace metadata (whole object; ``None`` empties it). Profiles
        are not touched.

        Only what actually differs is written: a call that changes nothing (no fields, or the
        values already stored) leaves ``updated_at`` alone and writes no audit row; the audit
        row of a real change lists the fields that changed (``fields``), never their values."""
        meta = UNSET if isinstance(metadata, Unset) else storable_metadata(metadata)

        def tx(session: Session) -> SpeakerRecord:
            speaker_id = self._speaker_id(session, external_id)
            speaker = session.get_one(Speaker, speaker_id)
            changed = []
            if not isinstance(name, Unset) and name != speaker.name:
                speaker.name = name
                changed.append("name")
            # Compared as JSON text: in Python 1 == 1.0 == True, as metadata they differ.
            if not isinstance(meta, Unset) and _json_text(meta) != _json_text(speaker.meta):
                speaker.meta = meta
                changed.append("metadata")
            if changed:
                speaker.updated_at = utcnow()
                session.flush()
                if audit is not None:
                    session.add(audit.entry(external_id, fields=sorted(changed)))
            return self._record_by_id(session, speaker_id)

        return self.write_transaction(tx)

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

        self.write_transaction(tx)

    def apply_floor(self) -> FloorChanges:
        """Bring every speaker's searchability in line with this store's floor (run at start-up:
        the floor may have changed since the speaker was written; ``storage.profile_floor``)."""
        return apply_profile_floor(self, self.model_identities, self.min_profile_speech_s)

    # ------------------------------------------------------------------ public reads
    def get(self, external_id: str) -> SpeakerRecord:
        def tx(session: Session) -> SpeakerRecord:
            row = session.execute(
                self._record_select().where(Speaker.external_id == external_id)
            ).one_or_none()
            if row is None:
                raise SpeakerNotFoundError(external_id)
            return self._to_record(row[0], row[1], row[2], row[3])

        return self.read_transaction(tx)

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
            records = utterance_records(session, ids, self.model_identities)
            return [records[i] for i in ids]

        return self.read_transaction(tx)

    def summaries(self, ids: list[int]) -> dict[int, SpeakerRecord]:
        """Records for search hits, in one query. Unknown ids (deleted meanwhile) are absent."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}

        def tx(session: Session) -> dict[int, SpeakerRecord]:
            rows = session.execute(self._record_select().where(Speaker.id.in_(wanted))).all()
            return {row[0].id: self._to_record(*row) for row in rows}

        return self.read_transaction(tx)

    def natively_narrowband(self, ids: list[int], max_rate: int) -> set[int]:
        """Of ``ids``, the speakers every one of whose clips came at ``max_rate`` Hz or less
        (enrolled from telephone-band audio). A clip of unknown rate (enrolled before migration
        0006) counts as wideband."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return set()
        unknown_is_wide = func.coalesce(Utterance.source_sample_rate, max_rate + 1)

        def tx(session: Session) -> set[int]:
            rows = session.execute(
                select(Utterance.speaker_id)
                .where(Utterance.speaker_id.in_(wanted))
                .group_by(Utterance.speaker_id)
                .having(func.max(unknown_is_wide) <= max_rate)
            )
            return {int(r[0]) for r in rows}

        return self.read_transaction(tx)

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
        equality) the given value (``storage.metadata_filter``)."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        conditions: list[ColumnElement[bool]] = []
        if name:
            conditions.append(Speaker.name.icontains(name, autoescape=True))
        for key, value in (metadata or {}).items():
            conditions.append(metadata_condition(key, value, sqlite=self.is_sqlite))

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

        return self.read_transaction(tx)
