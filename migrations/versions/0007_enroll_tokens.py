"""Enroll tokens: a voice found by identify-speakers, enrollable without re-uploading.

``enroll_tokens``: one row per ``unknown_<n>`` voice of an identify-speakers answer, keyed by
the sha256 of its token, bound to the API key that asked, with the voice's speech as a short
FLAC excerpt (NULL once used or expired). Kept in the database, not in a process, so a token
issued by one worker or node is redeemed by any other.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 04:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "enroll_tokens",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.String(length=128), nullable=False),
        sa.Column("label", sa.String(length=32), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=True),
        sa.Column("speech_s", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("audio", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("digest", name="pk_enroll_tokens"),
    )
    op.create_index("ix_enroll_tokens_expires_at", "enroll_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_enroll_tokens_expires_at", table_name="enroll_tokens")
    op.drop_table("enroll_tokens")
