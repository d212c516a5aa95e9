"""Speaker metadata as stored: what may be written, and how a stored row is read back.

The column holds JSON text that SQLite's JSON functions parse (the list filter,
``storage.metadata_filter``). Python's ``json`` writes ``NaN``/``Infinity`` by default, which
SQLite refuses as malformed JSON: one such row made every filtered list fail. So a write must
be a JSON object of finite numbers (:func:`storable_metadata`, the storage layer's own check;
the service refuses such input earlier with a clearer message), and a row written by an older
version is read back with its non-finite numbers as ``null`` (:func:`readable_metadata`;
migration ``0004`` repairs the rows themselves).
"""

from __future__ import annotations

import json
import math
from typing import Any

from storage.errors import InvalidMetadataError


def storable_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """``metadata`` (``None``: empty) if it can be stored as JSON that SQLite accepts."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidMetadataError("metadata must be a JSON object")
    try:
        json.dumps(metadata, allow_nan=False)
    except ValueError as exc:  # NaN/Infinity, or an integer too long to write
        raise InvalidMetadataError(f"metadata cannot be stored as JSON: {exc}") from None
    except TypeError as exc:
        raise InvalidMetadataError(f"metadata is not JSON: {exc}") from None
    return dict(metadata)


def has_non_finite(value: Any) -> bool:
    """Whether a JSON value holds a NaN or ±Infinity anywhere (iteratively: any depth)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def without_non_finite(value: Any) -> Any:
    """``value`` with every NaN/±Infinity replaced by ``None`` (JSON ``null``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: without_non_finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_non_finite(item) for item in value]
    return value


def readable_metadata(stored: Any) -> dict[str, Any]:
    """A stored value as the metadata object clients get: a row from an older version may hold
    non-finite numbers (now ``null``) or, written by hand, something other than an object."""
    if not isinstance(stored, dict):
        return {}
    if not has_non_finite(stored):
        return dict(stored)
    try:
        return without_non_finite(stored)
    except RecursionError:  # nested beyond anything this service ever accepted
        return {}
