"""Speech quality and calibration: net speech per utterance, stored calibrations.

``utterances.speech_s``: seconds of net speech (VAD) in the clip; NULL for clips enrolled before
this revision (their ``duration_s`` stands in). ``calibrations``: decision thresholds and score
calibration measured by ``voicesearch calibrate``, per encoder space and model identity.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 04:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("utterances") as batch:
        batch.add_column(sa.Column("speech_s", sa.Float(), nullable=True))
    op.create_table(
        "calibrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("space", sa.String(length=32), nullable=False),
        sa.Column("model_identity", sa.String(length=128), nullable=False),
        # "cosine" (raw) or "asnorm": the score the threshold and calibration apply to.
        sa.Column("score_type", sa.String(length=16), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("target_far", sa.Float(), nullable=False),
        sa.Column("far", sa.Float(), nullable=True),
        sa.Column("frr", sa.Float(), nullable=True),
        sa.Column("eer", sa.Float(), nullable=True),
        sa.Column("n_genuine", sa.Integer(), nullable=False),
        sa.Column("n_impostor", sa.Integer(), nullable=False),
        sa.Column("n_speakers", sa.Integer(), nullable=False),
        # LogisticCalibration.to_dict(): score -> match probability; NULL if not fitted.
        sa.Column("logistic", sa.JSON(), nullable=True),
        sa.Column("source", sa.String(length=512), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_calibrations"),
    )
    op.create_index(
        "ix_calibrations_space_model_identity_id",
        "calibrations",
        ["space", "model_identity", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_calibrations_space_model_identity_id", table_name="calibrations")
    op.drop_table("calibrations")
    with op.batch_alter_table("utterances") as batch:
        batch.drop_column("speech_s")
