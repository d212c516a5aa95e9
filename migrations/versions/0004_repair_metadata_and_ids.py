"""Repair rows older versions could write: non-finite metadata numbers, non-NFC external ids.

* ``speakers.metadata``: Python's ``json`` wrote ``NaN``/``Infinity``/``-Infinity``, which
  SQLite's JSON functions refuse as malformed, so a single such row made every metadata-filtered
  list fail. Each row SQLite cannot parse is re-read with Python's lenient parser and rewritten
  with those numbers as ``null``, everything else kept. A row that is not JSON at all, or not an
  object, becomes ``{}`` (no version of the service wrote one; it is logged).
* ``speakers.external_id``: ids are now Unicode-normalised (NFC) where they enter, so "é" and
  "e" + U+0301 are one id. A stored id that is not NFC is renamed to its NFC form (and the audit
  rows that name it follow), so it stays reachable. If the NFC form is already taken (the
  look-alike pair this change prevents), it becomes ``<nfc>~<row id>`` instead and is logged:
  both speakers stay addressable.

Data only; the schema does not change. The helpers are copied here on purpose: a migration is
a snapshot and must not change when the application's code does.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 00:00:00
"""

from __future__ import annotations

import json
import logging
import math
import unicodedata
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("voicesearch.migrations")

MAX_EXTERNAL_ID_LENGTH = 128


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _repaired(text: str | None, speaker_id: int) -> str:
    try:
        value = json.loads(text) if text is not None else {}
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        log.warning("speaker %d: metadata was not a JSON object; replaced by {}", speaker_id)
        return "{}"
    return json.dumps(_finite(value), allow_nan=False)


def _repair_metadata(conn: sa.Connection) -> int:
    if conn.dialect.name != "sqlite":
        return 0  # other databases' JSON types never accepted NaN/Infinity
    # CASE: json_type must not see text json_valid refused (it would raise "malformed JSON").
    rows = conn.execute(
        sa.text(
            "SELECT id, metadata FROM speakers WHERE metadata IS NULL OR CASE "
            "WHEN json_valid(metadata) THEN json_type(metadata) != 'object' ELSE 1 END"
        )
    ).all()
    for speaker_id, text in rows:
        conn.execute(
            sa.text("UPDATE speakers SET metadata = :m WHERE id = :id"),
            {"m": _repaired(text, speaker_id), "id": speaker_id},
        )
    return len(rows)


def _taken(conn: sa.Connection, external_id: str) -> bool:
    found = conn.execute(
        sa.text("SELECT 1 FROM speakers WHERE external_id = :e"), {"e": external_id}
    ).first()
    return found is not None


def _normalise_external_ids(conn: sa.Connection) -> int:
    # Only non-ASCII ids can be non-NFC; collected first (streamed: a million rows is fine),
    # renamed after, so no cursor reads the table while it changes.
    candidates = [
        (speaker_id, external_id)
        for speaker_id, external_id in conn.execute(sa.text("SELECT id, external_id FROM speakers"))
        if not external_id.isascii() and not unicodedata.is_normalized("NFC", external_id)
    ]
    renamed = 0
    for speaker_id, old in candidates:
        new = unicodedata.normalize("NFC", old)
        if _taken(conn, new):
            suffix = f"~{speaker_id}"
            new = new[: MAX_EXTERNAL_ID_LENGTH - len(suffix)] + suffix
            log.warning(
                "speaker %d: external id %r is a look-alike of an existing one; renamed %r",
                speaker_id,
                old,
                new,
            )
            if _taken(conn, new):
                continue
        conn.execute(
            sa.text("UPDATE speakers SET external_id = :new WHERE id = :id"),
            {"new": new, "id": speaker_id},
        )
        conn.execute(
            sa.text(
                "UPDATE audit_log SET speaker_external_id = :new WHERE speaker_external_id = :old"
            ),
            {"new": new, "old": old},
        )
        renamed += 1
    return renamed


def upgrade() -> None:
    conn = op.get_bind()
    repaired = _repair_metadata(conn)
    renamed = _normalise_external_ids(conn)
    if repaired or renamed:
        log.info("repaired the metadata of %d speakers, normalised %d ids", repaired, renamed)


def downgrade() -> None:
    pass  # a repair: the malformed values are not worth restoring
