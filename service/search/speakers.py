"""Speaker management: get, list, update, delete; and storage errors in the service's words.

Blocking (SQLite); ``service.search.voicesearch`` runs these in worker threads. Records are
returned as they are (``storage.records.SpeakerRecord``); ``service.api.mappers`` renders them.
"""

from __future__ import annotations

from typing import Any

from service.core import errors
from service.core.settings import Settings
from service.search.fields import check_metadata, check_name
from storage import audit
from storage import errors as storage_errors
from storage.audit import Actor, AuditRecord
from storage.records import UNSET, SpeakerRecord
from storage.speakers import SpeakerStore


class translate_storage_errors:
    """Map storage's own exceptions onto the service's error vocabulary."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, storage_errors.SpeakerNotFoundError):
            raise errors.SpeakerNotFound(str(exc)) from exc
        if isinstance(exc, storage_errors.DuplicateExternalIdError):
            raise errors.DuplicateSpeaker(str(exc)) from exc
        if isinstance(exc, storage_errors.StorageBusyError):
            raise errors.StorageBusy(str(exc)) from exc


def check_speaker_metadata(settings: Settings, metadata: dict[str, Any] | None) -> None:
    """The configured size and depth limits on speaker metadata (``search.fields``)."""
    check_metadata(
        metadata,
        max_bytes=settings.max_metadata_bytes,
        max_depth=settings.max_metadata_depth,
    )


class Speakers:
    def __init__(self, settings: Settings, store: SpeakerStore) -> None:
        self.settings = settings
        self.store = store

    def get(self, external_id: str) -> SpeakerRecord:
        with translate_storage_errors():
            return self.store.get(external_id)

    def list(
        self, *, offset: int, limit: int, name: str | None, metadata: dict[str, Any] | None
    ) -> tuple[list[SpeakerRecord], int]:
        return self.store.list(offset=offset, limit=limit, name=name, metadata=metadata)

    def check_update(self, changes: dict[str, Any]) -> None:
        check_name(changes.get("name"))
        check_speaker_metadata(self.settings, changes.get("metadata"))

    def update(self, external_id: str, changes: dict[str, Any], actor: Actor) -> SpeakerRecord:
        # Which fields changed, never their values (metadata may be personal data).
        record = AuditRecord(audit.ACTION_UPDATE, actor, {"fields": sorted(changes)})
        with translate_storage_errors():
            return self.store.update(
                external_id,
                name=changes.get("name", UNSET),
                metadata=changes.get("metadata", UNSET),
                audit=record,
            )

    def delete(self, external_id: str, actor: Actor) -> None:
        with translate_storage_errors():
            self.store.delete(external_id, audit=AuditRecord(audit.ACTION_DELETE, actor))
