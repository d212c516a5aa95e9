"""Errors of the vector index layer."""

from __future__ import annotations


class VectorIndexError(Exception):
    """Base class of the errors raised on purpose by ``index``."""


class IndexInputError(VectorIndexError, ValueError):
    """Wrong dtype, shape, dimension or non-finite values passed to the index."""


class IndexCorruptError(VectorIndexError):
    """A snapshot file is truncated, altered, or disagrees with its own header."""
