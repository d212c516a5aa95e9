"""Database identity and the change log's compaction horizon.

``database_identity``: one row holding a random UUID written when this revision runs. Index
snapshots record it and refuse to serve another database's vectors (a data directory pointed at
another database file, a copied snapshot directory).

``index_state.log_horizon``: per space, the newest ``index_changes.seq`` that has been deleted
by compaction (0: nothing deleted). A snapshot or a running index older than the horizon cannot
be caught up from the log any more and is reloaded or rebuilt instead.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 00:00:00
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    identity = op.create_table(
        "database_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_database_identity"),
    )
    op.bulk_insert(
        identity,
        [
            {
                "id": 1,
                "uuid": str(uuid.uuid4()),
                "created_at": datetime.now(UTC).replace(tzinfo=None),
            }
        ],
    )
    with op.batch_alter_table("index_state") as batch:
        batch.add_column(sa.Column("log_horizon", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("index_state") as batch:
        batch.drop_column("log_horizon")
    op.drop_table("database_identity")
