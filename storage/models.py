"""ORM models. The schema itself is created and changed only by the Alembic migrations in
``migrations/versions``; ``tests/test_migrations.py`` checks that the two agree.

Vectors are stored as raw little-endian float32 bytes (``numpy.ndarray.tobytes``): compact, no
JSON float round-off, and decoded with ``numpy.frombuffer`` without a copy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names: SQLite can only alter constraints through Alembic's batch mode
# (copy the table), which needs to know every constraint by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

OP_UPSERT = "upsert"
OP_DELETE = "delete"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no timezone type: SQLAlchemy stores the text without offset and returns naive
    datetimes. We store UTC and attach ``timezone.utc`` when reading, so callers always get
    aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Speaker(Base):
    __tablename__ = "speakers"
    # AUTOINCREMENT: ids are never reused after a delete. The id is also the FAISS id, and a
    # reused id could make a stale index entry (or a client's cached search hit) point at a
    # different person.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str | None] = mapped_column(String(256))
    # "metadata" is reserved on declarative classes; the column keeps the public name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Utterance(Base):
    __tablename__ = "utterances"
    # (speaker_id, sha256) unique: uploading the same clip for the same speaker twice is a no-op.
    # Its index also serves the FK lookups of ON DELETE CASCADE (speaker_id is its first column).
    __table_args__ = (UniqueConstraint("speaker_id", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    speaker_id: Mapped[int] = mapped_column(ForeignKey("speakers.id", ondelete="CASCADE"))
    language: Mapped[str | None] = mapped_column(String(32))
    language_confidence: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float] = mapped_column(Float)
    sha256: Mapped[str] = mapped_column(String(64))
    # Net speech (VAD) in seconds; NULL for clips enrolled before migration 0003.
    speech_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The upload's own sample rate (Hz); NULL for clips enrolled before migration 0006.
    source_sample_rate: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Embedding(Base):
    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("utterance_id", "space"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    utterance_id: Mapped[int] = mapped_column(ForeignKey("utterances.id", ondelete="CASCADE"))
    space: Mapped[str] = mapped_column(String(32))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    dim: Mapped[int] = mapped_column(Integer)
    model_identity: Mapped[str] = mapped_column(String(128))


class Profile(Base):
    __tablename__ = "profiles"
    __table_args__ = (
        # PK leads with speaker_id: it serves the ON DELETE CASCADE lookups from speakers.
        PrimaryKeyConstraint("speaker_id", "space"),
        # Index builds scan one space's current-model profiles in id order (keyset pages) and
        # count them; this index serves both without a sort.
        Index(None, "space", "model_identity", "speaker_id"),
    )

    speaker_id: Mapped[int] = mapped_column(ForeignKey("speakers.id", ondelete="CASCADE"))
    space: Mapped[str] = mapped_column(String(32))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    model_identity: Mapped[str] = mapped_column(String(128))
    n_utterances: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class IndexChange(Base):
    """Append-only log of profile changes; each process's FAISS index replays it."""

    __tablename__ = "index_changes"
    __table_args__ = (
        Index(None, "space", "seq"),
        # AUTOINCREMENT: seq must grow strictly even if the newest rows are ever pruned,
        # otherwise a worker could skip a change whose seq it believes it has already applied.
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    space: Mapped[str] = mapped_column(String(32))
    # No FK: a deleted speaker keeps its "delete" rows.
    speaker_id: Mapped[int] = mapped_column(Integer)
    op: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IndexState(Base):
    __tablename__ = "index_state"

    space: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Bumped by `voicesearch index rebuild`; a worker whose index has another generation reloads.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # Newest index_changes.seq of this space deleted by compaction (storage.change_log).
    log_horizon: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class DatabaseIdentity(Base):
    """One row: a random UUID written by migration 0005. Index snapshots record it, so a
    snapshot of another database is never served."""

    __tablename__ = "database_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who changed which enrolled voice, when: enrollments, updates, deletions, admin actions.

    Append-only. ``speaker_external_id`` is kept as text (no FK) so the record of a deletion
    outlives the speaker it deleted.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "speaker_external_id"), Index(None, "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    action: Mapped[str] = mapped_column(String(64))
    speaker_external_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The API key's name and role (never the key itself); "anonymous" when auth is off.
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str | None] = mapped_column(String(32), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Calibration(Base):
    """A decision threshold (and score → probability map) measured by ``voicesearch calibrate``.

    The newest row whose ``space`` and ``model_identity`` match the loaded encoder is in force.
    """

    __tablename__ = "calibrations"
    __table_args__ = (Index(None, "space", "model_identity", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    space: Mapped[str] = mapped_column(String(32))
    model_identity: Mapped[str] = mapped_column(String(128))
    score_type: Mapped[str] = mapped_column(String(16))  # "cosine" or "asnorm"
    threshold: Mapped[float] = mapped_column(Float)
    target_far: Mapped[float] = mapped_column(Float)
    far: Mapped[float | None] = mapped_column(Float, nullable=True)
    frr: Mapped[float | None] = mapped_column(Float, nullable=True)
    eer: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_genuine: Mapped[int] = mapped_column(Integer)
    n_impostor: Mapped[int] = mapped_column(Integer)
    n_speakers: Mapped[int] = mapped_column(Integer)
    logistic: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    source: Mapped[str | None] = mapped_column(String(512), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class EnrollToken(Base):
    """A voice found by identify-speakers that its caller may enroll without re-uploading.

    ``digest`` is the sha256 of the token (the token itself is never stored: reading the
    database gives no usable token). ``audio`` is the voice's speech as a short FLAC excerpt,
    NULL once the token is used or expired; rows are deleted a while after they expire
    (``storage.enroll_tokens``).
    """

    __tablename__ = "enroll_tokens"
    __table_args__ = (Index(None, "expires_at"),)

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal: Mapped[str] = mapped_column(String(128))  # the API key's name; "anonymous"
    label: Mapped[str] = mapped_column(String(32))  # unknown_<n> in the identify answer
    language: Mapped[str | None] = mapped_column(String(16), nullable=True)
    speech_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    audio: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
