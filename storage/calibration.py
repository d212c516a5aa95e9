"""Stored calibrations: decision thresholds and score → probability maps per encoder space.

Written by ``voicesearch calibrate``; read at start-up and by ``GET /calibration``. The newest
row whose space *and model identity* match the loaded encoder is in force: a calibration made
with another model says nothing about this one's scores and is ignored.
``voicesearch calibrate`` stores a row (audited: ``calibration.store``); ``voicesearch
calibrate --withdraw SPACE`` deletes a space's rows (audited: ``calibration.withdraw``), which
puts the shipped rule back in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage import audit
from storage.models import Calibration, utcnow
from storage.tx import Transactions

SCORE_COSINE = "cosine"
SCORE_ASNORM = "asnorm"


@dataclass(frozen=True)
class CalibrationRecord:
    id: int
    created_at: datetime
    space: str
    model_identity: str
    score_type: str
    threshold: float
    target_far: float
    far: float | None
    frr: float | None
    eer: float | None
    n_genuine: int
    n_impostor: int
    n_speakers: int
    logistic: dict[str, float] | None
    source: str | None
    details: dict[str, Any] = field(default_factory=dict)


def _record(row: Calibration) -> CalibrationRecord:
    return CalibrationRecord(
        id=row.id,
        created_at=row.created_at,
        space=row.space,
        model_identity=row.model_identity,
        score_type=row.score_type,
        threshold=row.threshold,
        target_far=row.target_far,
        far=row.far,
        frr=row.frr,
        eer=row.eer,
        n_genuine=row.n_genuine,
        n_impostor=row.n_impostor,
        n_speakers=row.n_speakers,
        logistic=dict(row.logistic) if row.logistic else None,
        source=row.source,
        details=dict(row.details or {}),
    )


def _audit_summary(record: CalibrationRecord) -> dict[str, Any]:
    """What the audit log keeps of a stored or withdrawn calibration."""
    return {
        "id": record.id,
        "created_at": record.created_at.isoformat(),
        "model_identity": record.model_identity,
        "score_type": record.score_type,
        "threshold": record.threshold,
        "tail": record.details.get("tail"),
        "source": record.source,
    }


class CalibrationStore:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sf = session_factory

    def add(
        self,
        *,
        space: str,
        model_identity: str,
        score_type: str,
        threshold: float,
        target_far: float,
        n_genuine: int,
        n_impostor: int,
        n_speakers: int,
        far: float | None = None,
        frr: float | None = None,
        eer: float | None = None,
        logistic: dict[str, float] | None = None,
        source: str | None = None,
        details: dict[str, Any] | None = None,
        actor: audit.Actor | None = None,
    ) -> CalibrationRecord:
        """Store a calibration; with ``actor``, its audit row (``calibration.store``) goes in
        the same transaction."""
        if score_type not in (SCORE_COSINE, SCORE_ASNORM):
            raise ValueError(f"unknown score type {score_type!r}")

        def insert(session: Session) -> CalibrationRecord:
            row = Calibration(
                created_at=utcnow(),
                space=space,
                model_identity=model_identity,
                score_type=score_type,
                threshold=float(threshold),
                target_far=float(target_far),
                far=far,
                frr=frr,
                eer=eer,
                n_genuine=int(n_genuine),
                n_impostor=int(n_impostor),
                n_speakers=int(n_speakers),
                logistic=logistic,
                source=source[:512] if source else None,
                details=dict(details or {}),
            )
            session.add(row)
            session.flush()  # the row's id
            stored = _record(row)
            if actor is not None:
                entry = {"space": space, **_audit_summary(stored)}
                record = audit.AuditRecord(audit.ACTION_CALIBRATION_STORE, actor, entry)
                audit.add(session, record, None)
            return stored

        return Transactions(self._sf).write_transaction(insert)

    def in_force(
        self, model_identities: Mapping[str, str], score_types: Mapping[str, str] | None = None
    ) -> dict[str, CalibrationRecord]:
        """Space → the newest calibration made with that space's loaded model (and, when
        ``score_types`` is given, for the score type the space uses)."""
        out: dict[str, CalibrationRecord] = {}
        with self._sf() as session:
            for space, identity in model_identities.items():
                conditions = [Calibration.space == space, Calibration.model_identity == identity]
                if score_types is not None:
                    conditions.append(
                        Calibration.score_type == score_types.get(space, SCORE_COSINE)
                    )
                row = session.scalars(
                    select(Calibration).where(*conditions).order_by(Calibration.id.desc()).limit(1)
                ).first()
                if row is not None:
                    out[space] = _record(row)
        return out

    def withdraw(self, space: str, actor: audit.Actor) -> list[CalibrationRecord]:
        """Delete every stored calibration of ``space``, so that the shipped rule is in force
        again, with one audit row (``calibration.withdraw``: what was deleted, tails included)
        in the same transaction. Returns the deleted calibrations (none: nothing changes)."""

        def delete(session: Session) -> list[CalibrationRecord]:
            rows = session.scalars(
                select(Calibration).where(Calibration.space == space).order_by(Calibration.id)
            ).all()
            gone = [_record(row) for row in rows]
            for row in rows:
                session.delete(row)
            if gone:
                details = {"space": space, "calibrations": [_audit_summary(r) for r in gone]}
                record = audit.AuditRecord(audit.ACTION_CALIBRATION_WITHDRAW, actor, details)
                audit.add(session, record, None)
            return gone

        return Transactions(self._sf).write_transaction(delete)

    def all(self) -> list[CalibrationRecord]:
        with self._sf() as session:
            rows = session.scalars(select(Calibration).order_by(Calibration.id)).all()
            return [_record(r) for r in rows]
