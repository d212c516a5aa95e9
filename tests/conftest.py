"""Shared fixtures: tiny random SpeechBrain models in the official layout (see
``tests/model_factory.py``), loaded once per session through the service's own loader, on the
product's default backend (``tiny_registry``) and on every backend (``backend_registry``); and
databases: a throw-away PostgreSQL cluster (``tests/postgres.py``) and ``database_url``, which
runs a test once on a SQLite file and once on a PostgreSQL database."""

from __future__ import annotations

import shutil
import signal
import tempfile
import uuid
from collections.abc import Generator, Iterator
from functools import cache
from pathlib import Path
from types import FrameType

from service.pipeline.threads import quiet_openmp

# Before torch loads, as the CLI does: the tests' process then threads like the service's.
quiet_openmp()

import pytest  # noqa: E402

from service.core.settings import Settings  # noqa: E402
from service.pipeline.backends import BACKENDS  # noqa: E402
from service.pipeline.dependencies import model_stack_problem  # noqa: E402
from service.pipeline.registry import ModelRegistry  # noqa: E402
from storage.migrate import upgrade_to_head  # noqa: E402
from tests.milvus import MilvusLiteServer  # noqa: E402
from tests.milvus import missing_reason as milvus_missing_reason  # noqa: E402
from tests.milvus import required as milvus_required  # noqa: E402
from tests.model_factory import (  # noqa: E402
    build_langid_model,
    build_speaker_model,
    load_tiny,
)
from tests.parallel import (  # noqa: E402
    LOCK_DIR_KEY,
    AloneLock,
    is_alone,
    order_units,
    terminate_children,
    worker_count,
    worker_threads,
)
from tests.postgres import PostgresCluster, find_bin_dir, missing_reason, required  # noqa: E402
from tests.server import kill_all_servers  # noqa: E402

# tests/test_parallel.py runs pytest on a few generated files.
pytest_plugins = ["pytester"]


@cache
def broken_install() -> str | None:
    """Why models cannot load in this environment (what `voicesearch doctor` says), or None."""
    return model_stack_problem()


def require_model_stack() -> None:
    """Fail a model test with the doctor's one-line diagnosis instead of an import traceback."""
    problem = broken_install()
    if problem:
        pytest.fail(
            f"voicesearch doctor: {problem} (run `voicesearch doctor`; reinstall with "
            "`pip install -c constraints.txt -e '.[test]'`)",
            pytrace=False,
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("real_model") is not None:
        require_model_stack()


class _NoNetwork(OSError):
    pass


@pytest.fixture(autouse=True)
def no_leaked_servers() -> Iterator[None]:
    """Whatever server a test started is dead when it ends: failed, timed out or forgotten.
    (A module-scoped fixture's shared server is stopped by that fixture.)"""
    yield
    kill_all_servers(keep_shared=True)


@pytest.fixture(autouse=True)
def no_hub_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never talk to the Hugging Face hub: every hub call fails here as an unreachable
    network would, so "hub unreachable" paths are exercised without sending a packet."""
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    def unreachable(*args: object, **kwargs: object) -> None:
        raise _NoNetwork("network access is disabled in tests")

    def download(*args: object, **kwargs: object) -> None:
        if kwargs.get("local_files_only"):  # a cache miss, as the real function reports it
            raise LocalEntryNotFoundError("not in the local cache")
        unreachable()

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """role → model directory: language ID favouring English, and both speaker encoders.

    Each ``hyperparams.yaml`` names its hub repo (``pretrained_path``), like the real ones.
    """
    require_model_stack()
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "langid": build_langid_model(root / "langid", seed=0, favour_language="en"),
        "voxceleb": build_speaker_model(root / "voxceleb", seed=0),
        "cnceleb": build_speaker_model(
            root / "cnceleb", seed=1, hub_name="LanceaKing/spkrec-ecapa-cnceleb"
        ),
    }


@pytest.fixture(scope="session")
def tiny_registry(tiny_model_dirs: dict[str, Path]) -> ModelRegistry:
    """The tiny models on the product's default backend (``VOICESEARCH_BACKEND`` if set)."""
    return load_tiny(tiny_model_dirs, Settings(_env_file=None).backend)


@pytest.fixture(scope="session", params=BACKENDS)
def backend_registry(
    request: pytest.FixtureRequest, tiny_model_dirs: dict[str, Path], tiny_registry: ModelRegistry
) -> ModelRegistry:
    """The tiny models on each backend in turn (the default one is ``tiny_registry`` itself)."""
    if request.param == Settings(_env_file=None).backend:
        return tiny_registry
    return load_tiny(tiny_model_dirs, request.param)


@pytest.fixture(scope="session")
def langid_zh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny language-ID model that detects Chinese ("zh") on any input."""
    return build_langid_model(tmp_path_factory.mktemp("langid-zh"), favour_language="zh")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One real PostgreSQL server for the session. Skipped with the reason where it cannot run
    (no server binaries on a developer's machine); a failure when VOICESEARCH_REQUIRE_POSTGRES=1
    (CI), so CI can never pass by skipping it."""
    reason = missing_reason()
    bin_dir = find_bin_dir()
    if reason is not None or bin_dir is None:
        message = f"PostgreSQL tests: {reason}"
        if required():
            pytest.fail(f"{message} (VOICESEARCH_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(message)
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards)."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)


@pytest.fixture(scope="session")
def postgres_head_template(postgres_cluster: PostgresCluster) -> str:
    """A PostgreSQL database migrated to head once per session, copied by
    ``migrated_database_url`` (a copy takes milliseconds, a migration about a second)."""
    url = postgres_cluster.create_database()
    upgrade_to_head(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at the newest schema: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vs.db'}"
        upgrade_to_head(url)
        yield url
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    url = cluster.create_database(template=request.getfixturevalue("postgres_head_template"))
    yield url
    cluster.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (not migrated): a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vs.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module")
def real_registry(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> ModelRegistry:
    """The real VoxCeleb ECAPA with tiny language-ID and CN-Celeb models (tests that use it are
    marked ``requires_real_model``); a module may define its own ``real_registry`` instead."""
    from tests.paths import REAL_VOXCELEB_DIR

    sources = {
        "langid": str(tiny_model_dirs["langid"]),
        "voxceleb": str(REAL_VOXCELEB_DIR),
        "cnceleb": str(tiny_model_dirs["cnceleb"]),
    }
    registry = ModelRegistry.load(sources, cache_dir=tmp_path_factory.mktemp("cache"))
    assert registry.all_loaded, registry.statuses
    return registry


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _interrupt_with_workers(signum: int, frame: FrameType | None) -> None:
    """The xdist controller: TERM its workers at once, then stop like Ctrl-C. Left to xdist, a
    worker is only interrupted 5 s into the controller's shutdown and SIGKILLed at 10 s, often
    before its finalisers have stopped its PostgreSQL cluster (seen: one left running)."""
    terminate_children()
    _interrupt(signum, frame)


ALONE_LOCK = pytest.StashKey[AloneLock]()
LOCK_DIR = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM to the test run (a CI timeout, `kill`) stops it like Ctrl-C, so fixture
    finalisers still kill the servers and PostgreSQL clusters the tests started; Python's
    default SIGTERM ends the process without running them. Under xdist each worker installs it
    too, and the controller passes its TERM on to them (``_interrupt_with_workers``).

    An xdist worker also threads for its share of the cores and joins the run's ``alone`` lock
    (``tests/parallel.py``)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        controller = bool(getattr(config.option, "numprocesses", None))
        signal.signal(signal.SIGTERM, _interrupt_with_workers if controller else _interrupt)
        return
    signal.signal(signal.SIGTERM, _interrupt)
    if worker_count() > 1:
        import torch

        torch.set_num_threads(worker_threads())
    if LOCK_DIR_KEY in workerinput:
        config.stash[ALONE_LOCK] = AloneLock(Path(workerinput[LOCK_DIR_KEY]))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:
    """xdist controller, once per worker: every worker of the run gets the same lock folder."""
    config: pytest.Config = node.config  # type: ignore[attr-defined]
    if LOCK_DIR not in config.stash:
        config.stash[LOCK_DIR] = Path(tempfile.mkdtemp(prefix="voicesearch-alone-"))
    node.workerinput[LOCK_DIR_KEY] = str(config.stash[LOCK_DIR])  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    if LOCK_DIR in config.stash:  # the controller, after its workers are gone
        shutil.rmtree(config.stash[LOCK_DIR], ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # only xdist workers collect in a parallel run
        order_units(items)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Outermost, so that waiting for the lock is not counted in a test's timeout."""
    lock = item.config.stash.get(ALONE_LOCK, None)
    if lock is None:
        return (yield)
    lock.acquire(is_alone(item))
    try:
        return (yield)
    finally:
        lock.after(nextitem)


@pytest.fixture(scope="module")
def milvus_server() -> Iterator[MilvusLiteServer]:
    """One Milvus Lite server process per test module (tests/milvus.py); each test keeps to its
    own collection prefix. Per module, not per session: pymilvus keeps one gRPC channel per
    address, and Milvus Lite's server closes a channel left idle for minutes ("Too many
    pings"), which failed the first connect of a later module in a CI run. Skipped without
    milvus-lite; a failure under VOICESEARCH_REQUIRE_MILVUS=1 (CI)."""
    reason = milvus_missing_reason()
    if reason is not None:
        if milvus_required():
            pytest.fail(f"{reason} (VOICESEARCH_REQUIRE_MILVUS=1)", pytrace=False)
        pytest.skip(reason)
    server = MilvusLiteServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["faiss", "milvus"])
def vector_store(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings overrides for each vector store: FAISS in the process, then Milvus (the shared
    Milvus Lite server, a fresh collection prefix per test)."""
    if request.param == "faiss":
        return {"vector_store": "faiss"}
    server: MilvusLiteServer = request.getfixturevalue("milvus_server")
    return {
        "vector_store": "milvus",
        "milvus_uri": server.uri,
        "milvus_collection_prefix": f"t{uuid.uuid4().hex[:12]}_",
    }
