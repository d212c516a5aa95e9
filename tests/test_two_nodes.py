"""Two nodes, one truth: two `voicesearch serve` processes with separate data directories
(standing for two machines) share nothing but one PostgreSQL database — and, with
``vector_store=milvus``, one Milvus (a Milvus Lite server process, ``tests/milvus.py``).

Each node keeps its own FAISS gallery and, before every search, catches up from the change log
in PostgreSQL, so an enrollment or deletion through one node is seen by the very next search
through the other. A node killed with SIGKILL loses nothing it acknowledged (the write is
committed in PostgreSQL), and on restart it catches up on what the other node did meanwhile.
With Milvus the nodes hold no vectors and write no snapshots: a write is published to the shared
collection before it is acknowledged, and a node that finds Milvus behind the log replays it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.server import ServerProcess, server_env
from tests.test_server_processes import best, enroll, verify_index

# Real servers, started three times: their own budget (see test_crash_safety).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def node_env(
    tmp_path: Path, name: str, model_dirs: dict[str, Path], url: str, store: dict[str, str]
) -> dict[str, str]:
    extra = {f"VOICESEARCH_{key.upper()}": value for key, value in store.items()}
    return server_env(tmp_path / name / "data", model_dirs, VOICESEARCH_DATABASE_URL=url, **extra)


def node(
    tmp_path: Path, name: str, model_dirs: dict[str, Path], url: str, store: dict[str, str]
) -> ServerProcess:
    env = node_env(tmp_path, name, model_dirs, url, store)
    return ServerProcess(env, log_path=tmp_path / f"{name}.log", log_level="info")


def test_two_nodes_share_one_postgres(
    tmp_path: Path,
    tiny_model_dirs: dict[str, Path],
    postgres_url: str,
    vector_store: dict[str, str],
) -> None:
    # Started together: both migrate the empty database at once (the advisory lock in
    # migrations/env.py lets one do it; their file locks are in different directories).
    a = node(tmp_path, "a", tiny_model_dirs, postgres_url, vector_store)
    b = node(tmp_path, "b", tiny_model_dirs, postgres_url, vector_store)
    a.wait_ready()
    b.wait_ready()
    with (
        httpx.Client(base_url=a.base_url, timeout=60) as via_a,
        httpx.Client(base_url=b.base_url, timeout=60) as via_b,
    ):
        nodes = (via_a, via_b)
        for i in range(4):
            writer, reader = nodes[i % 2], nodes[(i + 1) % 2]
            assert enroll(writer, f"s{i}", i).status_code == 201
            assert best(reader, i) == f"s{i}"  # the very next search on the other node

        assert via_a.delete("/speakers/s0").status_code == 200
        assert best(via_b, 0) != "s0"
        assert via_b.delete("/speakers/s1").status_code == 200
        assert best(via_a, 1) != "s1"
        assert via_a.get("/speakers/s1").status_code == 404

        # SIGKILL node A right after it acknowledged a write: node B has it.
        assert enroll(via_a, "last-of-a", 40).status_code == 201
    a.kill()
    with httpx.Client(base_url=b.base_url, timeout=60) as via_b:
        assert best(via_b, 40) == "last-of-a"
        # Meanwhile node B changes things; node A, restarted on its old data directory (and its
        # snapshot, if it wrote one), must catch up on them.
        assert enroll(via_b, "while-a-was-down", 41).status_code == 201
        assert via_b.delete("/speakers/s2").status_code == 200

    a = node(tmp_path, "a", tiny_model_dirs, postgres_url, vector_store)
    a.wait_ready()
    with httpx.Client(base_url=a.base_url, timeout=60) as via_a:
        assert best(via_a, 41) == "while-a-was-down"
        assert best(via_a, 2) != "s2"
        for i in (3,):
            assert best(via_a, i) == f"s{i}"
        listed = via_a.get("/speakers", params={"limit": 100}).json()["speakers"]
        assert sorted(s["id"] for s in listed) == ["last-of-a", "s3", "while-a-was-down"]
    a.stop()
    b.stop()
    result = verify_index(node_env(tmp_path, "a", tiny_model_dirs, postgres_url, vector_store))
    assert result.returncode == 0, result.stdout + result.stderr
