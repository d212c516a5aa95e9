"""Make every stored speaker's searchability agree with the enrollment floor in force.

A speaker is searchable (has profiles, so index entries) when its utterances hold at least
``min_profile_speech_s`` of net speech. That rule is applied at each write, so a floor that
changed between two runs of the service leaves speakers decided under the old one: most
importantly, speakers enrolled with 1-10 s of speech by releases whose floor was 10 s stayed
stored but unsearchable after an upgrade to the 1 s floor, until someone added audio. At
start-up the service runs :func:`apply_profile_floor`, which finds the speakers on the wrong
side of the floor with two set queries and recomputes their profiles through the same
``recompute_profiles`` every write uses, logging the usual ``index_changes`` rows, so every
index (this process's and every other node's) follows through the change log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Subquery, and_, exists, select
from sqlalchemy.orm import Session

from storage.models import Embedding, Profile, Utterance, utcnow
from storage.profiles import identity_condition, net_speech_sum, recompute_profiles
from storage.tx import Transactions

# Speakers recomputed per write transaction: bounded, so a large backlog never holds the one
# writer lock (SQLite's, or PostgreSQL's advisory lock) for long.
_BATCH = 200


@dataclass(frozen=True)
class FloorChanges:
    """Speakers whose profiles were recomputed because the floor in force disagreed."""

    made_searchable: int
    made_unsearchable: int


def _speech_per_speaker() -> Subquery:
    return (
        select(
            Utterance.speaker_id.label("speaker_id"),
            net_speech_sum().label("speech"),
        )
        .group_by(Utterance.speaker_id)
        .subquery()
    )


def speakers_off_floor(
    session: Session, model_identities: Mapping[str, str], min_profile_speech_s: float
) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    """``(to_promote, to_demote)``: speaker id -> spaces. To promote: embeddings of the loaded
    model and enough speech, but no current-model profile. To demote: a profile, but less
    speech than the floor."""
    speech = _speech_per_speaker()
    missing_profile = ~exists().where(
        and_(
            Profile.speaker_id == Utterance.speaker_id,
            Profile.space == Embedding.space,
            identity_condition(model_identities, Profile.space, Profile.model_identity),
        )
    )
    promote: dict[int, set[str]] = {}
    for speaker_id, space in session.execute(
        select(Utterance.speaker_id, Embedding.space)
        .join(Embedding, Embedding.utterance_id == Utterance.id)
        .join(speech, speech.c.speaker_id == Utterance.speaker_id)
        .where(
            identity_condition(model_identities, Embedding.space, Embedding.model_identity),
            speech.c.speech >= min_profile_speech_s,
            missing_profile,
        )
        .distinct()
    ):
        promote.setdefault(int(speaker_id), set()).add(space)
    demote: dict[int, set[str]] = {}
    if min_profile_speech_s > 0:
        for speaker_id, space in session.execute(
            select(Profile.speaker_id, Profile.space)
            .join(speech, speech.c.speaker_id == Profile.speaker_id)
            .where(speech.c.speech < min_profile_speech_s)
        ):
            demote.setdefault(int(speaker_id), set()).add(space)
    return promote, demote


def apply_profile_floor(
    transactions: Transactions,
    model_identities: Mapping[str, str],
    min_profile_speech_s: float,
) -> FloorChanges:
    """Recompute the profiles of every speaker on the wrong side of the floor (see module)."""
    promote, demote = transactions.read_transaction(
        lambda s: speakers_off_floor(s, model_identities, min_profile_speech_s)
    )
    work = sorted({*promote, *demote})
    for start in range(0, len(work), _BATCH):
        chunk = work[start : start + _BATCH]

        def tx(session: Session, chunk: list[int] = chunk) -> None:
            now = utcnow()
            for speaker_id in chunk:
                spaces = promote.get(speaker_id, set()) | demote.get(speaker_id, set())
                # recompute_profiles re-reads the speech total inside this transaction, so a
                # write that landed since the scan above is respected, never undone.
                recompute_profiles(
                    session, speaker_id, spaces, now, model_identities, min_profile_speech_s
                )

        transactions.write_transaction(tx)
    return FloorChanges(made_searchable=len(promote), made_unsearchable=len(demote))
