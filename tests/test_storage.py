"""SpeakerStore against real databases: CRUD, atomicity, profiles, change log, concurrency.

Every test runs twice, on a SQLite file and on a PostgreSQL database (``database_url`` in
``tests/conftest.py``); the change log's ordering under concurrent PostgreSQL commits is
proven in ``tests/test_storage_postgres.py``."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, event, text

from bench.synthetic import bulk_insert_synthetic
from storage.audit import (
    ACTION_DELETE,
    ACTION_ENROLL,
    ANONYMOUS,
    Actor,
    AuditRecord,
    list_entries,
)
from storage.db import make_engine, make_session_factory
from storage.errors import (
    DuplicateExternalIdError,
    InvalidEmbeddingError,
    InvalidMetadataFilterError,
    SpeakerNotFoundError,
    StorageBusyError,
)
from storage.records import UtteranceInput
from storage.speakers import SpeakerStore

VOX, CN = "voxceleb", "cnceleb"
IDENTITIES = {VOX: "vox-model@aaaa", CN: "cn-model@bbbb"}
DIM = 8


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def utt(
    rng: np.random.Generator,
    sha: str,
    spaces: tuple[str, ...] = (VOX, CN),
    dim: int = DIM,
    language: str | None = "en",
) -> UtteranceInput:
    return UtteranceInput(
        sha256=sha,
        language=language,
        language_confidence=0.9 if language else None,
        duration_s=3.5,
        embeddings={space: unit(rng, dim) for space in spaces},
    )


def expected_profile(inputs: list[UtteranceInput], space: str) -> np.ndarray:
    mean = np.mean([u.embeddings[space] for u in inputs], axis=0, dtype=np.float64)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


@pytest.fixture
def db_url(migrated_database_url: str) -> str:
    return migrated_database_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> SpeakerStore:
    return SpeakerStore(make_session_factory(engine), IDENTITIES)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def profiles_by_id(store: SpeakerStore, space: str) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for ids, vectors in store.iter_profiles(space):
        out.update(zip(ids.tolist(), vectors, strict=True))
    return out


# ---------------------------------------------------------------------------------- CRUD
def test_create_and_get(store: SpeakerStore, rng: np.random.Generator) -> None:
    inputs = [utt(rng, "a" * 64), utt(rng, "b" * 64, spaces=(VOX,))]
    record, utterances = store.create_speaker(
        external_id="alice", name="Alice", metadata={"team": "red"}, utterances=inputs
    )
    assert record.external_id == "alice" and record.name == "Alice"
    assert record.metadata == {"team": "red"}
    assert record.utterance_count == 2
    assert record.spaces == [CN, VOX]
    assert record.created_at.tzinfo == UTC
    assert [u.created for u in utterances] == [True, True]
    assert utterances[0].spaces == [CN, VOX] and utterances[1].spaces == [VOX]
    assert utterances[0].language == "en" and utterances[0].duration_s == 3.5

    assert store.get("alice") == record
    assert [u.sha256 for u in store.list_utterances("alice")] == ["a" * 64, "b" * 64]
    with pytest.raises(SpeakerNotFoundError):
        store.get("nobody")
    with pytest.raises(SpeakerNotFoundError):
        store.list_utterances("nobody")


def test_generated_external_id_and_no_utterances(store: SpeakerStore) -> None:
    record, utterances = store.create_speaker(
        external_id=None, name=None, metadata=None, utterances=[]
    )
    assert record.external_id.startswith("spk_") and len(record.external_id) == 36
    assert utterances == [] and record.spaces == [] and record.metadata == {}


def test_duplicate_external_id(store: SpeakerStore, rng: np.random.Generator) -> None:
    store.create_speaker(external_id="dup", name="one", metadata=None, utterances=[utt(rng, "1")])
    cursor = store.change_cursor()
    with pytest.raises(DuplicateExternalIdError):
        store.create_speaker(
            external_id="dup", name="two", metadata=None, utterances=[utt(rng, "2")]
        )
    assert store.get("dup").name == "one"
    assert store.list(offset=0, limit=10)[1] == 1
    assert store.change_cursor() == cursor


def test_update(store: SpeakerStore) -> None:
    created, _ = store.create_speaker(external_id="u", name="Old", metadata={"a": 1}, utterances=[])
    renamed = store.update("u", name="New")
    assert renamed.name == "New" and renamed.metadata == {"a": 1}
    assert renamed.updated_at >= created.updated_at
    assert store.update("u", metadata={"b": [1, 2]}).metadata == {"b": [1, 2]}  # replaced
    cleared = store.update("u", name=None)
    assert cleared.name is None and cleared.metadata == {"b": [1, 2]}
    with pytest.raises(SpeakerNotFoundError):
        store.update("missing", name="x")


def test_delete_removes_everything_and_logs_every_space(
    store: SpeakerStore, engine: Engine, rng: np.random.Generator
) -> None:
    first, _ = store.create_speaker(
        external_id="gone", name=None, metadata=None, utterances=[utt(rng, "x"), utt(rng, "y")]
    )
    keep, _ = store.create_speaker(
        external_id="keep", name=None, metadata=None, utterances=[utt(rng, "z", spaces=(VOX,))]
    )
    before = store.change_cursor().seq
    store.delete("gone")
    with pytest.raises(SpeakerNotFoundError):
        store.get("gone")
    with pytest.raises(SpeakerNotFoundError):
        store.delete("gone")

    with engine.connect() as conn:
        counts = {
            table: conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
            for table in ("speakers", "utterances", "embeddings", "profiles")
        }
        ops = conn.execute(
            text("SELECT space, speaker_id, op FROM index_changes WHERE seq > :s ORDER BY space"),
            {"s": before},
        ).all()
    assert counts == {"speakers": 1, "utterances": 1, "embeddings": 1, "profiles": 1}
    assert [tuple(r) for r in ops] == [(CN, first.id, "delete"), (VOX, first.id, "delete")]
    for space in (VOX, CN):
        assert store.changes_since(space, before)[1] == [(first.id, None)]
    assert store.summaries([first.id, keep.id]).keys() == {keep.id}

    # Ids are never reused, even for the highest id (AUTOINCREMENT).
    store.delete("keep")
    again, _ = store.create_speaker(external_id="new", name=None, metadata=None, utterances=[])
    assert again.id > keep.id


def test_audit_rows_commit_with_their_change(store: SpeakerStore) -> None:
    enroll = AuditRecord(ACTION_ENROLL, Actor("ops", "admin"), {"files": 0})
    fields: dict[str, Any] = {"name": None, "metadata": None, "utterances": [], "audit": enroll}
    store.create_speaker(external_id="au", **fields)
    with pytest.raises(DuplicateExternalIdError):  # rolled back: no audit row
        store.create_speaker(external_id="au", **fields)
    store.delete("au", audit=AuditRecord(ACTION_DELETE, ANONYMOUS))
    rows, total = list_entries(store.session_factory, limit=10)
    assert total == 2
    assert [(r.action, r.speaker_external_id, r.actor) for r in rows] == [
        (ACTION_DELETE, "au", "anonymous"),
        (ACTION_ENROLL, "au", "ops"),
    ]
    assert rows[1].details == {"files": 0} and rows[1].created_at.tzinfo == UTC


# ---------------------------------------------------------------------------------- listing
def test_list_pagination_and_filters(store: SpeakerStore) -> None:
    metas: list[dict[str, Any]] = [
        {"team": "red", "level": 1, "vip": True, "tags": ["a", "b"], "extra": None},
        {"team": "blue", "level": 1.0, "vip": 1},
        {"team": "red", "level": "1", "vip": False, "tags": ["b", "a"]},
    ]
    names = ["Ann Lee", "ANNA", "Bob", "100% sure", "under_score"]
    for i in range(25):
        store.create_speaker(
            external_id=f"s{i:02d}",
            name=names[i % len(names)],
            metadata=metas[i % len(metas)],
            utterances=[],
        )

    pages = [store.list(offset=offset, limit=10) for offset in (0, 10, 20)]
    assert [len(p[0]) for p in pages] == [10, 10, 5]
    assert all(total == 25 for _, total in pages)
    listed = [r.external_id for p in pages for r in p[0]]
    assert listed == [f"s{i:02d}" for i in range(25)]
    assert store.list(offset=100, limit=10) == ([], 25)

    def ids(**filters: Any) -> list[str]:
        records, total = store.list(offset=0, limit=100, **filters)
        assert total == len(records)
        return [r.external_id for r in records]

    assert len(ids(name="ann")) == 10  # "Ann Lee" + "ANNA", case-insensitive substring
    assert len(ids(name="NN L")) == 5
    assert len(ids(name="0%")) == 5  # LIKE wildcards are literal
    assert len(ids(name="r_s")) == 5  # "under_score" only; '_' is not a wildcard
    assert ids(name="zzz") == []

    red = ids(metadata={"team": "red"})
    assert len(red) == 17 and "s00" in red and "s02" in red
    assert ids(metadata={"team": "red", "vip": True}) == [f"s{i:02d}" for i in range(0, 25, 3)]
    assert ids(metadata={"vip": 1}) == [f"s{i:02d}" for i in range(1, 25, 3)]  # true != 1
    assert ids(metadata={"level": "1"}) == [f"s{i:02d}" for i in range(2, 25, 3)]  # "1" != 1
    assert len(ids(metadata={"level": 1})) == 17  # 1 == 1.0 (JSON has one number type)
    assert ids(metadata={"tags": ["a", "b"]}) == ids(metadata={"vip": True})  # order matters
    assert ids(metadata={"extra": None}) == ids(metadata={"vip": True})  # null != missing
    assert ids(metadata={"missing": "x"}) == []
    assert len(ids(name="ann", metadata={"team": "red"})) == 7
    with pytest.raises(InvalidMetadataFilterError):
        store.list(offset=0, limit=10, metadata={'bad"key': 1})


def test_summaries_is_one_query(
    store: SpeakerStore, engine: Engine, rng: np.random.Generator
) -> None:
    created = [
        store.create_speaker(
            external_id=f"p{i}", name=f"P{i}", metadata={"i": i}, utterances=[utt(rng, str(i))]
        )[0]
        for i in range(5)
    ]
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        found = store.summaries([r.id for r in created] + [9999])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert found == {r.id: r for r in created}
    assert len([s for s in statements if not s.startswith("BEGIN")]) == 1
    assert store.summaries([]) == {}


# ---------------------------------------------------------------------------------- profiles
def test_profiles_are_normalised_means(store: SpeakerStore, rng: np.random.Generator) -> None:
    first = [utt(rng, "1"), utt(rng, "2"), utt(rng, "3", spaces=(VOX,))]
    record, _ = store.create_speaker(external_id="m", name=None, metadata=None, utterances=first)
    profiles = profiles_by_id(store, VOX)
    np.testing.assert_allclose(profiles[record.id], expected_profile(first, VOX), atol=1e-6)
    np.testing.assert_allclose(
        profiles_by_id(store, CN)[record.id], expected_profile(first[:2], CN), atol=1e-6
    )
    assert abs(np.linalg.norm(profiles[record.id]) - 1) < 1e-6

    more = [utt(rng, "4"), utt(rng, "5")]
    store.add_utterances("m", more)
    np.testing.assert_allclose(
        profiles_by_id(store, VOX)[record.id], expected_profile(first + more, VOX), atol=1e-6
    )
    np.testing.assert_allclose(
        profiles_by_id(store, CN)[record.id],
        expected_profile(first[:2] + more, CN),
        atol=1e-6,
    )
    assert store.profile_count(VOX) == 1


def test_reupload_is_idempotent(store: SpeakerStore, rng: np.random.Generator) -> None:
    clip = utt(rng, "same")
    record, _ = store.create_speaker(
        external_id="r", name=None, metadata=None, utterances=[clip, clip]
    )
    assert record.utterance_count == 1
    cursor = store.change_cursor()
    profile = profiles_by_id(store, VOX)[record.id]

    # Same sha256 again (even with other vectors: the stored clip wins) → nothing changes.
    again = UtteranceInput(
        sha256="same",
        language="fr",
        language_confidence=0.5,
        duration_s=9.0,
        embeddings={VOX: unit(rng), CN: unit(rng)},
    )
    updated, records = store.add_utterances("r", [again])
    assert [r.created for r in records] == [False]
    assert records[0].language == "en"  # the stored clip's data
    assert updated.utterance_count == 1
    assert store.change_cursor() == cursor
    np.testing.assert_array_equal(profiles_by_id(store, VOX)[record.id], profile)

    # The same clip for ANOTHER speaker is a different utterance.
    other, _ = store.create_speaker(external_id="o", name=None, metadata=None, utterances=[clip])
    assert other.utterance_count == 1


def test_change_rows_and_compaction(store: SpeakerStore, rng: np.random.Generator) -> None:
    assert store.change_cursor().seq == 0
    a, _ = store.create_speaker(
        external_id="a", name=None, metadata=None, utterances=[utt(rng, "1")]
    )
    assert store.change_cursor().seq == 2  # one upsert per space
    b, _ = store.create_speaker(
        external_id="b", name=None, metadata=None, utterances=[utt(rng, "2", spaces=(CN,))]
    )
    store.add_utterances("a", [utt(rng, "3")])
    store.update("a", name="no index change")
    assert store.change_cursor().seq == 5

    seq, changes = store.changes_since(VOX, 0)
    assert seq == 5
    assert [speaker_id for speaker_id, _ in changes] == [a.id]  # compacted: a once
    np.testing.assert_array_equal(changes[0][1], profiles_by_id(store, VOX)[a.id])
    assert [i for i, _ in store.changes_since(CN, 0)[1]] == [a.id, b.id]
    # A space with nothing new still advances to the global seq.
    assert store.changes_since(VOX, 5) == (5, [])
    assert store.changes_since(CN, 4) == (5, [])  # seq 5 is a voxceleb row

    # limit cuts the window at a change row of that space (cnceleb rows: seq 1, 3, 4);
    # callers continue from the returned seq.
    seq1, chunk1 = store.changes_since(CN, 0, limit=1)
    assert seq1 == 1 and [i for i, _ in chunk1] == [a.id]
    seq2, chunk2 = store.changes_since(CN, seq1, limit=1)
    assert seq2 == 3 and [i for i, _ in chunk2] == [b.id]
    assert store.pending_changes(CN, 0) == 3


def test_model_change_keeps_spaces_apart(
    engine: Engine, store: SpeakerStore, rng: np.random.Generator
) -> None:
    clip = utt(rng, "c")
    record, _ = store.create_speaker(external_id="m", name=None, metadata=None, utterances=[clip])
    new_model = SpeakerStore(
        make_session_factory(engine), {VOX: "vox-model@NEW", CN: IDENTITIES[CN]}
    )
    assert new_model.profile_count(VOX) == 0
    assert list(new_model.iter_profiles(VOX)) == []
    assert new_model.get("m").spaces == [CN]
    assert new_model.list_utterances("m")[0].spaces == [CN]
    assert new_model.changes_since(VOX, 0)[1] == [(record.id, None)]  # stale → not indexable

    # Re-uploading the clip re-embeds it with the new model in place.
    fresh = UtteranceInput("c", "en", 0.9, 3.5, {VOX: unit(rng)})
    updated, records = new_model.add_utterances("m", [fresh])
    assert records[0].created is False and updated.spaces == [CN, VOX]
    np.testing.assert_allclose(
        profiles_by_id(new_model, VOX)[record.id], fresh.embeddings[VOX], atol=1e-6
    )


def test_iter_profiles_batches_and_bulk_insert(
    store: SpeakerStore, rng: np.random.Generator
) -> None:
    store.create_speaker(external_id="real", name=None, metadata=None, utterances=[utt(rng, "r")])
    store.delete("real")  # the highest id so far is deleted: bulk ids must go above it
    vectors = np.stack([unit(rng) for _ in range(7)])
    before = store.change_cursor().seq
    bulk_insert_synthetic(store, VOX, vectors, name_prefix="bench")
    batches = list(store.iter_profiles(VOX, batch_size=3))
    assert [len(ids) for ids, _ in batches] == [3, 3, 1]
    ids = np.concatenate([ids for ids, _ in batches])
    assert ids.tolist() == list(range(2, 9))
    np.testing.assert_array_equal(np.concatenate([v for _, v in batches]), vectors)
    assert store.profile_count(VOX) == 7 and store.profile_count(CN) == 0
    records, total = store.list(offset=0, limit=100, name="bench")
    assert total == 7 and len({r.external_id for r in records}) == 7
    assert [i for i, _ in store.changes_since(VOX, before)[1]] == list(range(2, 9))
    with pytest.raises(InvalidEmbeddingError):
        bulk_insert_synthetic(store, "unknown", vectors)


def test_bump_generation(store: SpeakerStore) -> None:
    assert store.change_cursor().generations == {}
    assert store.bump_generation(VOX) == 1
    assert store.bump_generation(VOX) == 2
    cursor = store.change_cursor()
    assert cursor.generation(VOX) == 2 and cursor.generation(CN) == 0


# ---------------------------------------------------------------------------------- atomicity
def test_wrong_dimension_in_second_utterance_stores_nothing(
    engine: Engine, rng: np.random.Generator
) -> None:
    store = SpeakerStore(make_session_factory(engine), IDENTITIES, dims={VOX: DIM, CN: DIM})
    with pytest.raises(InvalidEmbeddingError, match="utterance 1"):
        store.create_speaker(
            external_id="bad",
            name=None,
            metadata=None,
            utterances=[utt(rng, "ok"), utt(rng, "wrong", dim=DIM + 1)],
        )
    assert store.list(offset=0, limit=10) == ([], 0)
    assert store.change_cursor().seq == 0


def test_dimension_conflict_found_inside_transaction_rolls_back(
    store: SpeakerStore, rng: np.random.Generator
) -> None:
    # Without configured dims the conflict is only visible against stored embeddings, i.e.
    # after the new rows were inserted; the transaction must still leave nothing behind.
    store.create_speaker(external_id="d", name=None, metadata=None, utterances=[utt(rng, "1")])
    cursor = store.change_cursor()
    with pytest.raises(InvalidEmbeddingError, match="dimension"):
        store.add_utterances("d", [utt(rng, "2"), utt(rng, "3", dim=DIM * 2)])
    assert store.get("d").utterance_count == 1
    assert store.change_cursor() == cursor


def test_failure_after_inserts_leaves_nothing(
    store: SpeakerStore, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("crash between writes")

    monkeypatch.setattr(store, "_recompute_profiles", explode)
    with pytest.raises(RuntimeError, match="crash"):
        store.create_speaker(external_id="x", name="x", metadata=None, utterances=[utt(rng, "1")])
    monkeypatch.undo()
    assert store.list(offset=0, limit=10) == ([], 0)
    assert store.change_cursor().seq == 0


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        ({"nope": np.ones(DIM, np.float32)}, "no model"),
        ({VOX: np.ones((2, DIM), np.float32)}, "1-D"),
        ({VOX: np.ones(DIM, np.int64)}, "float"),
        ({VOX: np.full(DIM, np.inf, np.float32)}, "NaN or infinity"),
        ({VOX: [1.0] * DIM}, "numpy"),
    ],
)
def test_invalid_embeddings(store: SpeakerStore, embeddings: dict, message: str) -> None:
    bad = UtteranceInput("s", None, None, 1.0, embeddings)
    with pytest.raises(InvalidEmbeddingError, match=message):
        store.create_speaker(external_id="i", name=None, metadata=None, utterances=[bad])


# ---------------------------------------------------------------------------------- concurrency
class WriteLockHolder:
    """Another client holding the database's write lock: SQLite's lock (BEGIN IMMEDIATE) or the
    writers' advisory lock on PostgreSQL (``storage.dialects``)."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite"):
            self.conn: Any = sqlite3.connect(
                url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
            )
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            import psycopg

            from storage.dialects import WRITE_LOCK_KEY

            dsn = url.replace("postgresql+psycopg://", "postgresql://")
            self.conn = psycopg.connect(dsn)
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))

    def release(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


def test_busy_database_retries_then_gives_up(db_url: str, rng: np.random.Generator) -> None:
    engine = make_engine(db_url, busy_timeout_ms=50)
    blocker = WriteLockHolder(db_url)
    try:
        store = SpeakerStore(make_session_factory(engine), IDENTITIES)
        store.retry_base_delay_s = 0.02
        with pytest.raises(StorageBusyError):
            store.create_speaker(external_id="b", name=None, metadata=None, utterances=[])

        # Released while we retry → the write goes through.
        threading.Timer(0.15, blocker.release).start()
        record, _ = store.create_speaker(external_id="b", name=None, metadata=None, utterances=[])
        assert store.get("b") == record
    finally:
        blocker.close()
        engine.dispose()


def _race(url: str, ids: list[str], start: Any, results: Any) -> None:
    engine = make_engine(url)
    store = SpeakerStore(make_session_factory(engine), IDENTITIES)
    rng = np.random.default_rng()
    start.wait()
    for external_id in ids:
        try:
            store.create_speaker(
                external_id=external_id,
                name=None,
                metadata=None,
                utterances=[utt(rng, external_id)],
            )
            results.put((external_id, "ok"))
        except DuplicateExternalIdError:
            results.put((external_id, "duplicate"))
        except Exception as error:  # anything else is a failure of the test
            results.put((external_id, f"error: {error!r}"))
    engine.dispose()


def test_concurrent_creates_with_same_external_id(db_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    ids = [f"race-{i}" for i in range(15)]
    procs = [ctx.Process(target=_race, args=(db_url, ids, start, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    time.sleep(0.5)  # let both import and connect, then release them together
    start.set()
    outcomes: dict[str, list[str]] = {}
    for _ in range(len(ids) * 2):
        external_id, outcome = results.get(timeout=60)
        outcomes.setdefault(external_id, []).append(outcome)
    for proc in procs:
        proc.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    for external_id in ids:
        assert sorted(outcomes[external_id]) == ["duplicate", "ok"], outcomes[external_id]

    engine = make_engine(db_url)
    try:
        store = SpeakerStore(make_session_factory(engine), IDENTITIES)
        assert store.list(offset=0, limit=100)[1] == len(ids)
        assert store.profile_count(VOX) == len(ids)
    finally:
        engine.dispose()


# ------------------------------------------------------------------ floor changes
def test_a_changed_enrollment_floor_is_applied_to_stored_speakers(
    engine: Engine, rng: np.random.Generator
) -> None:
    """Speakers written under one floor (an earlier release required 10 s of net speech) follow
    the floor in force when the store applies it at start-up: made searchable, or hidden again,
    each through the change log so every index follows."""

    def speech(sha: str, seconds: float) -> UtteranceInput:
        base = utt(rng, sha, spaces=(VOX,))
        return dataclasses.replace(base, speech_s=seconds)

    old = SpeakerStore(make_session_factory(engine), IDENTITIES, min_profile_speech_s=10.0)
    old.create_speaker(
        external_id="short", name=None, metadata=None, utterances=[speech("a" * 64, 4.0)]
    )
    old.create_speaker(
        external_id="long", name=None, metadata=None, utterances=[speech("b" * 64, 12.0)]
    )
    assert set(profiles_by_id(old, VOX)) == {old.get("long").id}
    seq, _ = old.changes_since(VOX, 0)

    new = SpeakerStore(make_session_factory(engine), IDENTITIES, min_profile_speech_s=1.0)
    changes = new.apply_floor()
    assert (changes.made_searchable, changes.made_unsearchable) == (1, 0)
    assert set(profiles_by_id(new, VOX)) == {new.get("short").id, new.get("long").id}
    assert new.get("short").spaces == [VOX]
    _, logged = new.changes_since(VOX, seq)
    assert [(sid, vec is not None) for sid, vec in logged] == [(new.get("short").id, True)]
    # Nothing left to do: a second start changes nothing and logs nothing.
    assert new.apply_floor() == type(changes)(0, 0)
    assert new.changes_since(VOX, new.changes_since(VOX, 0)[0])[1] == []

    strict = SpeakerStore(make_session_factory(engine), IDENTITIES, min_profile_speech_s=20.0)
    changes = strict.apply_floor()
    assert (changes.made_searchable, changes.made_unsearchable) == (0, 2)
    assert profiles_by_id(strict, VOX) == {}
    # The utterances are kept: lowering the floor again brings both back.
    assert new.apply_floor().made_searchable == 2
    assert new.get("long").utterance_count == 1
