"""Checks on client-supplied speaker fields that no schema alone can express.

- ``external_id``: Unicode-normalised to NFC wherever it enters (enrollment, every path that
  names a speaker, the audit filter), so "é" (U+00E9) and "e" + U+0301, which look identical,
  are one id. Then 1-128 characters (the database column's size), printable, no ``/`` (it is a
  URL path segment), no leading/trailing whitespace, not ``.`` or ``..`` (clients normalise
  those away in URLs). Any other Unicode is fine.
- ``language`` (given by the caller): at most 16 characters on every endpoint.
- ``name``: at most 256 printable characters.
- ``metadata``: a JSON object of at most ``max_metadata_bytes`` (compact UTF-8 JSON) and
  ``max_metadata_depth`` levels of nesting, whose numbers are finite (``NaN``/``Infinity`` are
  not JSON; Python's ``json`` accepts and writes them, SQLite's JSON functions do not).
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

from service.core import errors

MAX_EXTERNAL_ID_LENGTH = 128
#: Longest language code a caller may send (ISO 639 codes and their aliases are far shorter).
MAX_LANGUAGE_LENGTH = 16
MAX_NAME_LENGTH = 256
#: Largest list offset: far beyond any gallery, well inside SQLite's 64-bit integers (a larger
#: one used to reach the database and fail there with a 500).
MAX_OFFSET = 1_000_000_000
#: The same rule as a regular expression, for the OpenAPI schema (the code check is authoritative).
EXTERNAL_ID_PATTERN = r"^[^/\s\x00-\x1f\x7f]([^/\x00-\x1f\x7f]*[^/\s\x00-\x1f\x7f])?$"


def normalise_external_id(external_id: str) -> str:
    """The one form an external id is stored and looked up in: Unicode NFC."""
    return unicodedata.normalize("NFC", external_id)


def check_language(language: str | None) -> None:
    if language is not None and len(language) > MAX_LANGUAGE_LENGTH:
        raise errors.InvalidInput(
            f"language must be at most {MAX_LANGUAGE_LENGTH} characters",
            details={"field": "language", "length": len(language)},
        )


def check_external_id(external_id: str | None) -> None:
    if external_id is None:
        return
    problem = None
    if not 1 <= len(external_id) <= MAX_EXTERNAL_ID_LENGTH:
        problem = f"must be 1-{MAX_EXTERNAL_ID_LENGTH} characters"
    elif not external_id.isprintable() or "/" in external_id:
        problem = "must be printable and must not contain '/'"
    elif external_id != external_id.strip() or external_id in {".", ".."}:
        problem = "must not start or end with whitespace, nor be '.' or '..'"
    if problem:
        raise errors.InvalidInput(
            f"external_id {problem}", details={"field": "external_id", "length": len(external_id)}
        )


def check_name(name: str | None) -> None:
    if name is None:
        return
    if len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise errors.InvalidInput(
            f"name must be at most {MAX_NAME_LENGTH} printable characters",
            details={"field": "name", "length": len(name)},
        )


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, iteratively (a hostile value cannot exhaust the stack);
    -1 when it holds a non-finite number."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            if isinstance(item, float) and not math.isfinite(item):
                return -1
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_metadata(metadata: dict[str, Any] | None, *, max_bytes: int, max_depth: int) -> None:
    if metadata is None:
        return
    depth = _depth(metadata, max_depth)
    if depth < 0:
        raise errors.InvalidInput(
            "metadata must not contain NaN or Infinity (they are not JSON numbers)",
            details={"field": "metadata"},
        )
    if depth > max_depth:
        raise errors.InvalidInput(
            f"metadata is nested more than {max_depth} levels deep",
            details={"field": "metadata", "max_depth": max_depth},
        )
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise errors.InvalidInput(
            f"metadata cannot be written as JSON: {exc}", details={"field": "metadata"}
        ) from None
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise errors.InvalidInput(
            f"metadata is {size} bytes of JSON; at most {max_bytes}",
            details={"field": "metadata", "bytes": size, "max_bytes": max_bytes},
        )
