"""`voicesearch migrate-store`: SQLite + FAISS → PostgreSQL + Milvus and back, with real servers
(tests/postgres.py, tests/milvus.py); the copy itself (storage.copy): refused on a non-empty
target, resumed after an interruption, ids and sequences right on PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.app import create_app
from service.cli import main
from service.pipeline.registry import ModelRegistry
from storage.copy import TargetNotEmpty, copied_tables, copy_database
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.records import UtteranceInput
from storage.speakers import SpeakerStore
from tests.api.conftest import make_settings
from tests.milvus import MilvusLiteServer
from tests.model_factory import shared_model_cache
from tests.test_server_processes import best, enroll


def cli(monkeypatch: pytest.MonkeyPatch, data_dir: Path, models: dict[str, Path], *args: str):
    """``voicesearch <args>`` in this process, configured like the tests' app."""
    env = {
        "VOICESEARCH_DATA_DIR": str(data_dir),
        "VOICESEARCH_MODEL_CACHE_DIR": str(shared_model_cache(models)),
        **{f"VOICESEARCH_MODEL_{role.upper()}": str(path) for role, path in models.items()},
        # As make_settings: the app's enrollment floor, or the start-up floor check would hide
        # the short synthetic speakers the app made searchable (storage/profile_floor.py).
        "VOICESEARCH_MIN_ENROLL_SPEECH_S": "0",
        "VOICESEARCH_VAD": "energy",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return main(list(args))


def test_sqlite_faiss_to_postgres_milvus_and_back(
    tmp_path: Path,
    tiny_model_dirs: dict[str, Path],
    tiny_registry: ModelRegistry,
    postgres_url: str,
    milvus_server: MilvusLiteServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = make_settings(tmp_path / "src", tiny_model_dirs)
    with TestClient(create_app(source, models=tiny_registry)) as client:
        for i in range(4):
            assert enroll(client, f"s{i}", i).status_code == 201
        assert client.delete("/speakers/s1").status_code == 200
        ids = {s["id"] for s in client.get("/speakers").json()["speakers"]}

    prefix = f"m{uuid.uuid4().hex[:10]}_"
    to_milvus = [
        "migrate-store",
        *("--to-database", postgres_url, "--to-store", "milvus"),
        *("--to-milvus-uri", milvus_server.uri, "--to-milvus-prefix", prefix),
    ]
    assert cli(monkeypatch, tmp_path / "src", tiny_model_dirs, *to_milvus) == 0
    out = capsys.readouterr().out
    assert "index verify (milvus): ok" in out and "voxceleb: ok: db=3 index=3" in out

    # A second run finds the target holding records and refuses, changing nothing.
    assert cli(monkeypatch, tmp_path / "src", tiny_model_dirs, *to_milvus) == 2
    assert "already holds records" in capsys.readouterr().err
    # Run from an installation that itself serves from that Milvus and prefix: refused before
    # anything is touched (the target's rebuild would drop the collections it serves from).
    with monkeypatch.context() as same:
        same.setenv("VOICESEARCH_VECTOR_STORE", "milvus")
        same.setenv("VOICESEARCH_MILVUS_URI", milvus_server.uri)
        same.setenv("VOICESEARCH_MILVUS_COLLECTION_PREFIX", prefix)
        assert cli(same, tmp_path / "src", tiny_model_dirs, *to_milvus, "--replace") == 2
    assert "the ones this installation uses" in capsys.readouterr().err

    target = make_settings(
        tmp_path / "pg",
        tiny_model_dirs,
        database_url=postgres_url,
        vector_store="milvus",
        milvus_uri=milvus_server.uri,
        milvus_collection_prefix=prefix,
    )
    with TestClient(create_app(target, models=tiny_registry)) as client:
        assert {s["id"] for s in client.get("/speakers").json()["speakers"]} == ids
        assert [best(client, i) for i in (0, 2, 3)] == ["s0", "s2", "s3"]
        assert best(client, 1) != "s1"
        # New rows get new ids (PostgreSQL's sequences were moved past the copied ones).
        assert enroll(client, "s9", 9).status_code == 201
        assert best(client, 9) == "s9"

    back = tmp_path / "back"
    assert (
        cli(
            monkeypatch,
            tmp_path / "pg",
            tiny_model_dirs,
            "migrate-store",
            *("--from-database", postgres_url, "--to-store", "faiss"),
            *("--to-database", f"sqlite:///{back / 'vs.db'}", "--to-data-dir", str(back)),
        )
        == 0
    )
    assert "index verify (faiss): ok" in capsys.readouterr().out
    returned = make_settings(back, tiny_model_dirs, database_url=f"sqlite:///{back / 'vs.db'}")
    with TestClient(create_app(returned, models=tiny_registry)) as client:
        assert best(client, 9) == "s9" and best(client, 0) == "s0"
        assert len(client.get("/speakers").json()["speakers"]) == 4


def _rows(url: str) -> dict[str, list[tuple]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = {
            t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
            for t in copied_tables()
        }
    engine.dispose()
    return rows


def test_an_interrupted_copy_resumes_to_an_identical_database(
    tmp_path: Path, postgres_url: str
) -> None:
    identities = {"voxceleb": "vox@1"}
    source_url = f"sqlite:///{tmp_path / 'src.db'}"
    upgrade_to_head(source_url)
    engine = make_engine(source_url)
    store = SpeakerStore(make_session_factory(engine), identities)
    rng = np.random.default_rng(3)
    for i in range(7):
        vector = rng.standard_normal(8).astype(np.float32)
        utterance = UtteranceInput(f"u{i}", "en", 0.9, 2.0, {"voxceleb": vector})
        store.create_speaker(
            external_id=f"p{i}", name=None, metadata={"i": i}, utterances=[utterance]
        )
    store.delete("p3")
    engine.dispose()
    upgrade_to_head(postgres_url)
    source, target = make_engine(source_url), make_engine(postgres_url)

    seen: list[str] = []

    def stop_in_profiles(table: str, done: int, total: int) -> None:
        seen.append(table)
        if table == "profiles" and done >= 2:
            raise KeyboardInterrupt("copy killed")

    with pytest.raises(KeyboardInterrupt):
        copy_database(source, target, batch=2, progress=stop_in_profiles)
    with pytest.raises(TargetNotEmpty):
        copy_database(source, target)
    report = copy_database(source, target, mode="resume", batch=2)
    assert report.copied["speakers"] == 0 and report.copied["profiles"] == 4  # 6 - 2 done
    assert _rows(postgres_url) == _rows(source_url)

    # The target takes new writes (sequences past the copied ids), and replace starts over.
    store = SpeakerStore(make_session_factory(target), identities)
    record, _ = store.create_speaker(
        external_id="new",
        name=None,
        metadata=None,
        utterances=[UtteranceInput("n", "en", 0.9, 2.0, {"voxceleb": np.ones(8, np.float32)})],
    )
    assert record.id == 8
    copy_database(source, target, mode="replace")
    assert _rows(postgres_url) == _rows(source_url)
    source.dispose()
    target.dispose()
