"""Enroll tokens in the database (table ``enroll_tokens``), so that any worker or node can
redeem a token another one issued.

A token is redeemed in two steps around the enrollment it pays for: :meth:`EnrollTokenStore.claim`
marks it used and hands back its audio in ONE write transaction (SQLite's ``BEGIN IMMEDIATE``,
PostgreSQL's writers' lock: two requests racing with one token cannot both get it); then
:meth:`EnrollTokenStore.spend` drops the audio once the enrollment is stored, or
:meth:`EnrollTokenStore.release` makes the token usable again when the enrollment was refused
(a taken external id, a bad name): a refused request does not burn the token.

Expired rows lose their audio at the next issue and are deleted :data:`TOMBSTONE` after they
expire (until then a late redeem is told "expired", not "unknown").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from storage.models import EnrollToken
from storage.tx import Transactions

#: How long an expired token's row (without its audio) is kept to answer "expired".
TOMBSTONE = timedelta(days=1)


def token_digest(token: str) -> str:
    """What is stored instead of the token: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Claim(Enum):
    CLAIMED = "claimed"
    MISSING = "missing"  # never issued, or deleted after expiry
    OTHER_PRINCIPAL = "other_principal"
    USED = "used"
    EXPIRED = "expired"


@dataclass(frozen=True)
class NewToken:
    digest: str
    principal: str
    label: str
    language: str | None
    speech_s: float
    audio: bytes


@dataclass(frozen=True)
class ClaimResult:
    outcome: Claim
    label: str | None = None
    language: str | None = None
    speech_s: float = 0.0
    audio: bytes | None = None  # only when CLAIMED
    claimed_at: datetime | None = None  # the mark to release, only when CLAIMED
    expires_at: datetime | None = None


class EnrollTokenStore(Transactions):
    def issue(self, tokens: list[NewToken], now: datetime, expires_at: datetime) -> None:
        """Store ``tokens`` (one transaction) and purge what has expired."""

        def write(session: Session) -> None:
            purge(session, now)
            session.add_all(
                EnrollToken(
                    digest=t.digest,
                    principal=t.principal,
                    label=t.label,
                    language=t.language,
                    speech_s=t.speech_s,
                    created_at=now,
                    expires_at=expires_at,
                    audio=t.audio,
                )
                for t in tokens
            )

        self.write_transaction(write)

    def claim(self, digest: str, principal: str, now: datetime) -> ClaimResult:
        """Mark the token used and return its audio, or say why it cannot be used."""

        def write(session: Session) -> ClaimResult:
            row = session.get(EnrollToken, digest)
            if row is None:
                return ClaimResult(Claim.MISSING)
            # The principal first: another key learns nothing about the token's state.
            if row.principal != principal:
                return ClaimResult(Claim.OTHER_PRINCIPAL)
            if row.used_at is not None:
                return ClaimResult(Claim.USED, row.label, expires_at=row.expires_at)
            if row.expires_at <= now or row.audio is None:
                return ClaimResult(Claim.EXPIRED, row.label, expires_at=row.expires_at)
            row.used_at = now
            return ClaimResult(
                Claim.CLAIMED,
                row.label,
                row.language,
                row.speech_s,
                bytes(row.audio),
                now,
                row.expires_at,
            )

        return self.write_transaction(write)

    def spend(self, digest: str) -> None:
        """The enrollment is stored: the audio is not needed any more."""
        self.write_transaction(
            lambda s: s.execute(
                update(EnrollToken).where(EnrollToken.digest == digest).values(audio=None)
            )
        )

    def release(self, digest: str, claimed_at: datetime) -> None:
        """The enrollment was refused: the token may be used again (if this claim still holds
        it)."""
        self.write_transaction(
            lambda s: s.execute(
                update(EnrollToken)
                .where(EnrollToken.digest == digest, EnrollToken.used_at == claimed_at)
                .values(used_at=None)
            )
        )

    def count(self) -> int:
        """Rows stored (tests and operators)."""
        return self.read_transaction(lambda s: s.query(EnrollToken).count())


def purge(session: Session, now: datetime) -> None:
    """Expired tokens lose their audio; a :data:`TOMBSTONE` later, their row."""
    session.execute(delete(EnrollToken).where(EnrollToken.expires_at < now - TOMBSTONE))
    session.execute(
        update(EnrollToken)
        .where(EnrollToken.expires_at <= now, EnrollToken.audio.is_not(None))
        .values(audio=None)
    )
