"""MilvusGallery against a real Milvus Lite server: several "nodes" (each its own engine, store
and client) share one database and one Milvus, as API nodes on separate machines do.

What must hold: a write published by one node is found by the next search on another; a
write whose node died between the database commit and the Milvus write is replayed by
whichever node searches next; a replay cut short re-applies harmlessly; rebuild and verify
work while other nodes keep searching; a restart picks up where Milvus is.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.milvus_collections import MilvusCollections, SpaceRecord
from service.app import create_app
from service.core.errors import VectorStoreUnavailable
from service.pipeline.registry import ModelRegistry
from service.search.milvus_gallery import MilvusGallery
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.records import UtteranceInput
from storage.speakers import SpeakerStore
from tests.api.conftest import make_settings
from tests.milvus import MilvusLiteServer
from tests.test_server_processes import best as best_clip
from tests.test_server_processes import enroll as enroll_clip

VOX, CN = "voxceleb", "cnceleb"
DIM = 8
DIMS = {VOX: DIM, CN: DIM}
IDENTITIES = {VOX: "vox@1", CN: "cn@1"}

Node = tuple[SpeakerStore, MilvusGallery]


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def make_node(tmp_path: Path, milvus_server: MilvusLiteServer) -> Iterator[Callable[..., Node]]:
    url = f"sqlite:///{tmp_path / 'vs.db'}"
    upgrade_to_head(url)
    prefix = f"g{uuid.uuid4().hex[:10]}_"
    made: list[tuple[object, MilvusGallery]] = []

    def factory(identities: dict[str, str] | None = None, *, open_: bool = True) -> Node:
        engine = make_engine(url)
        ids = identities or IDENTITIES
        store = SpeakerStore(make_session_factory(engine), ids)
        collections = MilvusCollections(milvus_server.uri, prefix=prefix)
        gallery = MilvusGallery(store, collections, DIMS, ids)
        made.append((engine, gallery))
        if open_:
            gallery.open()
        return store, gallery

    yield factory
    for engine, gallery in made:
        gallery.close()
        engine.dispose()  # type: ignore[attr-defined]


def enroll(
    store: SpeakerStore, rng: np.random.Generator, external_id: str
) -> tuple[int, np.ndarray]:
    vector = unit(rng)
    utterance = UtteranceInput(f"{external_id}-0", "en", 0.9, 2.0, {VOX: vector, CN: unit(rng)})
    record, _ = store.create_speaker(
        external_id=external_id, name=None, metadata=None, utterances=[utterance]
    )
    return record.id, vector


def best(gallery: MilvusGallery, vector: np.ndarray) -> tuple[int | None, float]:
    hits, _ = gallery.search_briefs(VOX, vector, 3, describe=3)
    return (hits[0].speaker_id, hits[0].score) if hits else (None, 0.0)


def test_published_writes_are_found_by_the_next_search_on_another_node(
    make_node: Callable[..., Node], rng: np.random.Generator
) -> None:
    store_a, gallery_a = make_node()
    _, gallery_b = make_node()
    assert gallery_b.search(VOX, unit(rng)[None, :], 3) == [[]]

    alice, vector = enroll(store_a, rng, "alice")
    gallery_a.publish()
    hits, briefs = gallery_b.search_briefs(VOX, vector, 3, describe=1)
    assert hits[0].speaker_id == alice and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert briefs[alice].external_id == "alice"
    assert gallery_b.size(VOX) == 1  # as of its last look; cnceleb's after a sync:
    gallery_b.sync()
    assert gallery_b.size(CN) == 1
    assert gallery_b.index_kind(VOX) == "milvus"
    np.testing.assert_allclose(gallery_b.vectors(VOX, np.array([alice, 999]))[0], vector, atol=1e-6)
    assert np.isnan(gallery_b.vectors(VOX, np.array([999]))).all()

    bob, bob_vector = enroll(store_a, rng, "bob")
    gallery_a.publish()
    store_a.delete("alice")
    gallery_a.publish()
    for space in (VOX, CN):
        found = [h.speaker_id for h in gallery_b.search(space, unit(rng)[None, :], 10)[0]]
        assert found == [bob]
    assert best(gallery_b, bob_vector)[0] == bob
    assert gallery_b.size(VOX) == 1


def test_a_write_whose_node_died_before_the_milvus_write_is_replayed_by_any_node(
    make_node: Callable[..., Node], rng: np.random.Generator
) -> None:
    """The database commit happened, the publish never did (SIGKILL between the two): Milvus's
    state row is behind the log, and the next search anywhere replays before answering."""
    store_a, gallery_a = make_node()
    _, gallery_b = make_node()
    seq_before = gallery_a.collections.read_state(VOX)
    carol, vector = enroll(store_a, rng, "carol")  # committed; gallery_a.publish() never runs
    assert gallery_a.collections.read_state(VOX) == seq_before  # Milvus has not seen it
    assert best(gallery_b, vector) == (carol, pytest.approx(1.0, abs=1e-5))
    record = gallery_b.collections.read_state(VOX)
    assert record is not None and record.seq == store_a.change_cursor().seq
    assert all(report.ok for report in gallery_a.verify().values())


def test_a_replay_cut_short_before_its_state_row_is_applied_again(
    make_node: Callable[..., Node], rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vectors written, state row not (the node died in between): the next replay applies
    the same changes again, and nothing is doubled or lost."""
    store_a, gallery_a = make_node()
    _, gallery_b = make_node()
    dave, vector = enroll(store_a, rng, "dave")
    real_write = MilvusCollections.write_state

    def die(self: MilvusCollections, record: SpaceRecord) -> None:
        raise KeyboardInterrupt("node killed before the state row was written")

    monkeypatch.setattr(MilvusCollections, "write_state", die)
    with pytest.raises(KeyboardInterrupt):
        gallery_a.publish()
    monkeypatch.setattr(MilvusCollections, "write_state", real_write)
    behind = gallery_b.collections.read_state(VOX)
    assert behind is not None and behind.seq < store_a.change_cursor().seq
    assert best(gallery_b, vector)[0] == dave
    reports = gallery_b.verify()
    assert all(r.ok for r in reports.values()), reports
    assert reports[VOX].index_count == 1


def test_rebuild_switches_collections_while_another_node_searches_and_verify_finds_drift(
    make_node: Callable[..., Node], rng: np.random.Generator
) -> None:
    store_a, gallery_a = make_node()
    _, gallery_b = make_node()
    ids = [enroll(store_a, rng, f"s{i}") for i in range(5)]
    gallery_a.publish()
    assert best(gallery_b, ids[0][1])[0] == ids[0][0]

    # Drift made behind the service's back is reported, and rebuild repairs it.
    live = gallery_a.collections.read_state(VOX)
    assert live is not None
    gallery_a.collections.delete(live.collection, np.array([ids[1][0]]))
    report = gallery_a.verify()[VOX]
    assert not report.ok and report.missing_ids == [ids[1][0]]

    rebuilt = gallery_a.rebuild(VOX)
    assert rebuilt.count == 5 and rebuilt.snapshot is None
    after = gallery_a.collections.read_state(VOX)
    assert after is not None and after.collection != live.collection
    assert not gallery_a.collections.exists(live.collection)
    # Node B still points at the dropped collection: its next search moves over by itself.
    assert best(gallery_b, ids[1][1])[0] == ids[1][0]
    assert gallery_b.version(VOX)[0] == rebuilt.generation
    assert all(r.ok for r in gallery_b.verify().values())


def test_restart_catches_up_and_a_new_model_gets_a_fresh_collection(
    make_node: Callable[..., Node], rng: np.random.Generator
) -> None:
    store_a, gallery_a = make_node()
    erin, _ = enroll(store_a, rng, "erin")
    gallery_a.publish()
    first = gallery_a.collections.read_state(VOX)
    gallery_a.close()

    # Written while no node was up to publish it: the next node to open replays it.
    frank, frank_vector = enroll(store_a, rng, "frank")
    _, gallery_c = make_node()
    assert gallery_c.collections.read_state(VOX).collection == first.collection  # type: ignore[union-attr]
    assert best(gallery_c, frank_vector)[0] == frank
    assert gallery_c.size(VOX) == 2

    # Another checkpoint of the voxceleb model: its vectors may never mix with the old ones.
    _, gallery_d = make_node({VOX: "vox@2", CN: "cn@1"}, open_=False)
    how = gallery_d.open()
    assert "made by model vox@1" in how[VOX]
    assert gallery_d.size(VOX) == 0 and gallery_d.size(CN) == 2
    assert erin  # (ids kept for the reader)


def test_milvus_gone_is_a_clear_503_not_a_crash(tmp_path: Path, rng: np.random.Generator) -> None:
    server = MilvusLiteServer()
    server.start()
    try:
        url = f"sqlite:///{tmp_path / 'gone.db'}"
        upgrade_to_head(url)
        engine = make_engine(url)
        store = SpeakerStore(make_session_factory(engine), IDENTITIES)
        gallery = MilvusGallery(
            store, MilvusCollections(server.uri, prefix="gone_"), DIMS, IDENTITIES
        )
        gallery.open()
        enroll(store, rng, "gina")
        gallery.publish()
    finally:
        server.stop()
    with pytest.raises(VectorStoreUnavailable) as caught:
        gallery.search_briefs(VOX, unit(rng), 3, describe=3)
    assert caught.value.status_code == 503
    engine.dispose()


def test_the_default_milvus_lite_file_serves_one_process(
    tmp_path: Path,
    tiny_model_dirs: dict[str, Path],
    tiny_registry: ModelRegistry,
    milvus_server: MilvusLiteServer,  # only for its skip / failure when milvus-lite is missing
) -> None:
    """No URI given: Milvus Lite embedded at <data_dir>/milvus.db (one process only)."""
    settings = make_settings(tmp_path / "data", tiny_model_dirs, vector_store="milvus")
    assert settings.vector_store_settings().milvus_uri == str(tmp_path / "data" / "milvus.db")
    with TestClient(create_app(settings, models=tiny_registry)) as client:
        assert enroll_clip(client, "amy", 1).status_code == 201
        assert best_clip(client, 1) == "amy"
        assert client.get("/health").status_code == 200
        metrics = client.get("/metrics")  # index stats: size, kind, no snapshot age
        assert metrics.status_code == 200 and 'index_type="milvus"' in metrics.text, metrics.text[
            :500
        ]
    assert (tmp_path / "data" / "milvus.db").exists()
