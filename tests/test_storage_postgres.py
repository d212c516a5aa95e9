"""The change log on PostgreSQL: a reader never skips a change, whatever order writers commit in.

On PostgreSQL two transactions draw change seqs N and N+1 from a sequence concurrently, and the
one holding N+1 can commit first. A reader that then sees N+1 and moves its cursor past N never
applies N (``storage.dialects`` explains the advisory lock that prevents it). The first test
forces that interleaving with raw SQL (no lock) and shows the skip is real; the others force it
through the store and show it cannot happen there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from storage.change_log import ChangeLog
from storage.db import make_engine, make_session_factory
from storage.records import UtteranceInput
from storage.speakers import SpeakerStore

VOX = "voxceleb"
IDENTITIES = {VOX: "vox-model@aaaa"}
DIM = 8


@pytest.fixture
def pg_url(postgres_cluster: Any, postgres_head_template: str) -> Iterator[str]:
    url = postgres_cluster.create_database(template=postgres_head_template)
    yield url
    postgres_cluster.drop_database(url)


@pytest.fixture
def engines(pg_url: str) -> Iterator[list[Engine]]:
    """Separate engines stand for separate API nodes (no shared pool)."""
    made = [make_engine(pg_url) for _ in range(3)]
    yield made
    for engine in made:
        engine.dispose()


def clip(seed: int) -> UtteranceInput:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return UtteranceInput(f"{seed:064x}", "en", 0.9, 3.0, {VOX: vector / np.linalg.norm(vector)})


def psycopg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_unlocked_writers_would_skip_a_change(pg_url: str, engines: list[Engine]) -> None:
    """The hazard is real: without the writers' lock, N+1 commits first and N is lost."""
    import psycopg

    reader = ChangeLog(make_session_factory(engines[0]), IDENTITIES)
    insert = (
        "INSERT INTO index_changes (space, speaker_id, op, created_at) "
        "VALUES ('voxceleb', %s, 'upsert', now()) RETURNING seq"
    )
    with (
        psycopg.connect(psycopg_dsn(pg_url)) as first,
        psycopg.connect(psycopg_dsn(pg_url)) as second,
    ):
        n = first.execute(insert, (101,)).fetchone()[0]
        n_plus_1 = second.execute(insert, (102,)).fetchone()[0]
        assert n_plus_1 == n + 1
        second.commit()  # N+1 commits while N is still open

        cursor, changes = reader.changes_since(VOX, 0)
        assert cursor == n_plus_1 and [i for i, _ in changes] == [102]
        first.commit()
    # N is committed now, below the reader's cursor: a reader following the log never sees it.
    assert reader.changes_since(VOX, cursor) == (cursor, [])


def test_a_later_change_cannot_commit_before_an_earlier_one(
    engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer A holds change N open; writer B (another node) writes meanwhile. B waits for A,
    so N+1 never becomes visible before N, and the reader, polling all along, sees both."""
    writer_a = SpeakerStore(make_session_factory(engines[0]), IDENTITIES)
    writer_b = SpeakerStore(make_session_factory(engines[1]), IDENTITIES)
    reader = ChangeLog(make_session_factory(engines[2]), IDENTITIES)

    a_inside, release_a = threading.Event(), threading.Event()
    original = writer_a._recompute_profiles

    def pause_after_logging(*args: Any) -> None:
        original(*args)  # A's change row (seq N) is written, not committed
        a_inside.set()
        assert release_a.wait(30)

    monkeypatch.setattr(writer_a, "_recompute_profiles", pause_after_logging)
    ids: dict[str, int] = {}
    errors: list[BaseException] = []

    def write(name: str, store: SpeakerStore, seed: int) -> None:
        try:
            record, _ = store.create_speaker(
                external_id=name, name=None, metadata=None, utterances=[clip(seed)]
            )
            ids[name] = record.id
        except BaseException as error:  # surfaced by the assertions below
            errors.append(error)

    thread_a = threading.Thread(target=write, args=("a", writer_a, 1))
    thread_b = threading.Thread(target=write, args=("b", writer_b, 2))
    seen: list[int] = []
    cursor = 0

    def poll() -> None:
        nonlocal cursor
        cursor, changes = reader.changes_since(VOX, cursor)
        seen.extend(speaker_id for speaker_id, vector in changes if vector is not None)

    thread_a.start()
    assert a_inside.wait(30)
    thread_b.start()
    for _ in range(10):  # B tries to write and commit while A is open
        poll()
        thread_b.join(0.1)
    assert thread_b.is_alive(), "B committed while A's earlier change was still open"
    assert seen == [] and not errors

    release_a.set()
    thread_a.join(30)
    thread_b.join(30)
    assert not errors, errors
    poll()
    assert seen == [ids["a"], ids["b"]]  # A drew its ids first; nothing was skipped
    assert reader.changes_since(VOX, cursor) == (cursor, [])


def test_concurrent_writers_and_a_catching_up_reader_agree(engines: list[Engine]) -> None:
    """Four writers on two "nodes" enroll and delete while a reader follows the log; the state
    the reader replays equals the database's profiles at the end."""
    stores = [SpeakerStore(make_session_factory(engines[i % 2]), IDENTITIES) for i in range(4)]
    reader = ChangeLog(make_session_factory(engines[2]), IDENTITIES)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(8):
                name = f"w{worker}-{i}"
                stores[worker].create_speaker(
                    external_id=name, name=None, metadata=None, utterances=[clip(worker * 100 + i)]
                )
                if i % 3 == 2:
                    stores[worker].delete(name)
        except BaseException as error:
            errors.append(error)

    replayed: set[int] = set()
    cursor = 0

    def follow() -> None:
        nonlocal cursor
        cursor, changes = reader.changes_since(VOX, cursor)
        for speaker_id, vector in changes:
            (replayed.add if vector is not None else replayed.discard)(speaker_id)

    def reader_loop() -> None:
        while not done.wait(0.01):
            follow()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    follower = threading.Thread(target=reader_loop)
    follower.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    follower.join(30)
    assert not errors, errors
    follow()
    in_database = {int(i) for ids, _ in reader.iter_profiles(VOX) for i in ids}
    assert len(in_database) == 4 * 8 - 4 * 2
    assert replayed == in_database
