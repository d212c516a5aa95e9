"""The speaker-list metadata filter: ``{"key": value}`` → one SQL condition per key.

Every key must equal the given value with JSON equality. On SQLite that is exact JSON equality
(same JSON kind, so ``true != 1`` and ``"1" != 1`` but ``1 == 1.0``; objects and arrays compare
as canonical JSON); PostgreSQL compares as jsonb with the same rules (``storage.dialects``).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, String, and_, case, func, literal

from storage import dialects
from storage.errors import InvalidMetadataFilterError
from storage.models import Speaker


def _json_kind(json_type: ColumnElement[Any]) -> ColumnElement[Any]:
    """SQLite's json_type() with 'integer' and 'real' folded into 'number' (JSON has one)."""
    return case((json_type.in_(["integer", "real"]), literal("number")), else_=json_type)


def metadata_condition(key: str, value: Any, *, sqlite: bool) -> ColumnElement[bool]:
    """Speakers whose metadata has ``value`` at top-level ``key``."""
    if not key or '"' in key or "\\" in key:
        raise InvalidMetadataFilterError(f"unsupported metadata filter key {key!r}")
    if sqlite:
        # JSON equality in SQLite: same JSON kind (so true != 1 and "1" != 1, but 1 == 1.0)
        # and same value; json_extract turns objects/arrays into canonical minified text.
        # IS is SQLite's null-safe '=' (a JSON null extracts to SQL NULL).
        path = f'$."{key}"'
        document = literal(json.dumps(value), String)
        column = Speaker.meta
        return and_(
            _json_kind(func.json_type(column, path)).is_not_distinct_from(
                _json_kind(func.json_type(document, "$"))
            ),
            func.json_extract(column, path).is_not_distinct_from(func.json_extract(document, "$")),
        )
    # PostgreSQL: jsonb equality, the same rules (storage.dialects).
    return dialects.metadata_condition(key, value)
