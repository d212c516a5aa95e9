"""Speaker management: get, list, update, delete.

Blocking (SQLite); ``service.search.voicesearch`` runs these in worker threads. Records are
returned as they are (``storage.records.SpeakerRecord``); ``service.api.mappers`` renders them.
Storage's exceptions pass through untranslated: the app answers every one of them in one place
(``service.api.error_handlers.STORAGE_ERRORS``).
"""

from __future__ import annotations

from typing import Any

from service.core.settings import Settings
from service.search.fields import check_metadata, check_name
from storage import audit
from storage.audit import Actor, AuditRecord
from storage.records import UNSET, SpeakerRecord
from storage.speakers import SpeakerStore


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
        return self.store.get(external_id)

    def list(
        self, *, offset: int, limit: int, name: str | None, metadata: dict[str, Any] | None
    ) -> tuple[list[SpeakerRecord], int]:
        return self.store.list(offset=offset, limit=limit, name=name, metadata=metadata)

    def check_update(self, changes: dict[str, Any]) -> None:
        check_name(changes.get("name"))
        check_speaker_metadata(self.settings, changes.get("metadata"))

    def update(self, external_id: str, changes: dict[str, Any], actor: Actor) -> SpeakerRecord:
        # The store writes the audit row only when something changed, naming the fields that
        # did (never their values: metadata may be personal data).
        return self.store.update(
            external_id,
            name=changes.get("name", UNSET),
            metadata=changes.get("metadata", UNSET),
            audit=AuditRecord(audit.ACTION_UPDATE, actor),
        )

    def delete(self, external_id: str, actor: Actor) -> None:
        self.store.delete(external_id, audit=AuditRecord(audit.ACTION_DELETE, actor))
