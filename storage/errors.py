"""Exceptions raised by the storage layer.

They know nothing of HTTP: the app's one handler (``service.api.error_handlers.STORAGE_ERRORS``)
answers them as ``service.core.errors`` types (``SpeakerNotFoundError`` → 404,
``DuplicateExternalIdError`` → 409, the ``Invalid*`` errors → 422, ``StorageBusyError`` → 503).
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error this package raises on purpose."""


class SpeakerNotFoundError(StorageError, LookupError):
    def __init__(self, external_id: str) -> None:
        super().__init__(f"speaker {external_id!r} not found")
        self.external_id = external_id


class DuplicateExternalIdError(StorageError):
    def __init__(self, external_id: str) -> None:
        super().__init__(f"a speaker with external_id {external_id!r} already exists")
        self.external_id = external_id


class InvalidEmbeddingError(StorageError, ValueError):
    """An embedding has the wrong shape/dtype/values, or names a space without a loaded model."""


class InvalidMetadataError(StorageError, ValueError):
    """Speaker metadata that cannot be stored as JSON (not an object, or a non-finite number:
    SQLite's JSON functions refuse ``NaN``/``Infinity``, and one such row broke every filter)."""


class InvalidMetadataFilterError(StorageError, ValueError):
    """A metadata filter key cannot be expressed as a JSON path."""


class StorageBusyError(StorageError):
    """The database stayed locked through every retry (another writer held it too long)."""
