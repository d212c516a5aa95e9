"""Audit log: who changed which enrolled voice, and when (table ``audit_log``).

Writers of speaker data (:class:`storage.speakers.SpeakerStore`) accept an optional
:class:`AuditRecord` and add its row in the *same transaction* as the change: a committed change
always has its audit row, and a rolled-back one never does. Operator actions that are not a
single transaction (``voicesearch index rebuild``) are recorded right after with
:func:`record`.

Actors are API-key *names and roles*, never keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.models import AuditEntry, utcnow
from storage.tx import Transactions

ACTION_ENROLL = "speaker.enroll"
ACTION_ADD_UTTERANCES = "speaker.add_utterances"
ACTION_UPDATE = "speaker.update"
ACTION_DELETE = "speaker.delete"
ACTION_INDEX_REBUILD = "index.rebuild"
ACTION_CALIBRATION_STORE = "calibration.store"
ACTION_CALIBRATION_WITHDRAW = "calibration.withdraw"


@dataclass(frozen=True)
class Actor:
    name: str
    role: str | None  # None: access control is off


ANONYMOUS = Actor("anonymous", None)


@dataclass(frozen=True)
class AuditRecord:
    action: str
    actor: Actor
    details: dict[str, Any] = field(default_factory=dict)

    def entry(self, speaker_external_id: str | None, **more: Any) -> AuditEntry:
        return AuditEntry(
            created_at=utcnow(),
            action=self.action,
            speaker_external_id=speaker_external_id,
            actor=self.actor.name[:128],
            role=self.actor.role,
            details={**self.details, **more},
        )


@dataclass(frozen=True)
class AuditRow:
    id: int
    created_at: datetime
    action: str
    speaker_external_id: str | None
    actor: str
    role: str | None
    details: dict[str, Any]


def add(session: Session, record: AuditRecord | None, speaker_external_id: str | None) -> None:
    """Add the audit row of a change to the change's own transaction."""
    if record is not None:
        session.add(record.entry(speaker_external_id))


def record(
    session_factory: sessionmaker[Session],
    audit: AuditRecord,
    speaker_external_id: str | None = None,
) -> None:
    """Write one audit row in its own transaction (for actions that are not one transaction)."""
    Transactions(session_factory).write_transaction(
        lambda session: session.add(audit.entry(speaker_external_id))
    )


def list_entries(
    session_factory: sessionmaker[Session],
    *,
    limit: int,
    offset: int = 0,
    speaker_external_id: str | None = None,
) -> tuple[list[AuditRow], int]:
    """Newest first. Retried while SQLite is busy, then ``StorageBusyError`` (a 503)."""

    def read(session: Session) -> tuple[list[AuditRow], int]:
        query = select(AuditEntry)
        count = select(func.count()).select_from(AuditEntry)
        if speaker_external_id is not None:
            query = query.where(AuditEntry.speaker_external_id == speaker_external_id)
            count = count.where(AuditEntry.speaker_external_id == speaker_external_id)
        rows = session.scalars(
            query.order_by(AuditEntry.id.desc()).offset(offset).limit(limit)
        ).all()
        total = int(session.scalar(count) or 0)
        return [
            AuditRow(
                id=r.id,
                created_at=r.created_at,
                action=r.action,
                speaker_external_id=r.speaker_external_id,
                actor=r.actor,
                role=r.role,
                details=dict(r.details or {}),
            )
            for r in rows
        ], total

    return Transactions(session_factory).read_transaction(read)
