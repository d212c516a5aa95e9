"""Source sample rate per utterance: which speakers were enrolled from telephone-band audio.

``utterances.source_sample_rate``: the uploaded file's own sample rate (Hz) before decoding to
16 kHz. A speaker all of whose clips are ≤ 8 kHz is *natively narrowband*: a narrowband probe
against it is decided on its own pair-type tail (``service.decisions.bandwidth``). NULL for
clips enrolled before this revision (their rate was not kept; such speakers count as wideband).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 04:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("utterances") as batch:
        batch.add_column(sa.Column("source_sample_rate", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("utterances") as batch:
        batch.drop_column("source_sample_rate")
