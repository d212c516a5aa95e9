"""Migrations: empty → head works, is idempotent, works from any cwd, and matches the models.

The tests taking ``database_url`` run on SQLite and on PostgreSQL (``tests/conftest.py``)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from storage.db import make_engine
from storage.migrate import current_revision, head_revision, upgrade_to_head
from storage.models import Base


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def test_asking_does_not_create_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "vs.db"  # parent dirs are created by the upgrade
    assert current_revision(sqlite_url(path)) is None
    assert not path.exists()  # asking did not create the file
    upgrade_to_head(sqlite_url(path))
    assert current_revision(sqlite_url(path)) == head_revision()


def test_upgrade_on_each_database(database_url: str) -> None:
    assert current_revision(database_url) is None
    upgrade_to_head(database_url)
    assert current_revision(database_url) == head_revision()
    engine = make_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {
        "speakers",
        "utterances",
        "embeddings",
        "profiles",
        "index_changes",
        "index_state",
        "audit_log",
        "calibrations",
        "alembic_version",
    } <= tables


def test_upgrade_is_idempotent(database_url: str) -> None:
    url = database_url
    upgrade_to_head(url)
    upgrade_to_head(url)
    assert current_revision(url) == head_revision()


def test_upgrade_does_not_depend_on_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no alembic.ini, no migrations/ here
    upgrade_to_head(sqlite_url(tmp_path / "vs.db"))
    assert current_revision(sqlite_url(tmp_path / "vs.db")) == head_revision()


def test_models_and_migrations_agree(database_url: str) -> None:
    url = database_url
    upgrade_to_head(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


def test_schema_details_autogenerate_cannot_see(tmp_path: Path) -> None:
    """AUTOINCREMENT (ids never reused), WAL, and FK cascades are in place."""
    path = tmp_path / "vs.db"
    upgrade_to_head(sqlite_url(path))
    conn = sqlite3.connect(path)
    try:
        sql = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert "AUTOINCREMENT" in sql["speakers"]
    assert "AUTOINCREMENT" in sql["index_changes"]
    for table in ("utterances", "embeddings", "profiles"):
        assert "ON DELETE CASCADE" in sql[table]


def _upgrade(url: str) -> None:
    upgrade_to_head(url)


def test_concurrent_upgrades_are_safe(database_url: str) -> None:
    # Two processes migrating the same fresh database: BEGIN IMMEDIATE (SQLite) or an advisory
    # lock (PostgreSQL) serialises them; the second finds the schema at head and does nothing
    # (no "table already exists").
    url = database_url
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_upgrade, args=(url,)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert current_revision(url) == head_revision()


BATCH_MIGRATION = """
import sqlalchemy as sa
from alembic import op

revision = "9999_test_batch"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # Rebuilds the table (copy + DROP + rename), as any SQLite ALTER beyond ADD COLUMN does.
    with op.batch_alter_table("speakers", recreate="always") as batch:
        batch.add_column(sa.Column("note", sa.String(20), nullable=True))


def downgrade():
    pass
"""


def test_table_rebuilding_migration_does_not_cascade(tmp_path: Path) -> None:
    """A future batch migration of `speakers` must not delete utterances through ON DELETE
    CASCADE when it drops the old copy of the table (env.py turns foreign keys off)."""
    from alembic import command

    from storage.migrate import alembic_config, migrations_dir

    path = tmp_path / "vs.db"
    url = sqlite_url(path)
    upgrade_to_head(url)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO speakers (id, external_id, metadata, created_at, updated_at) "
            "VALUES (1, 'a', '{}', '2024-01-01', '2024-01-01')"
        )
        conn.execute(
            "INSERT INTO utterances (speaker_id, duration_s, sha256, created_at) "
            "VALUES (1, 1.0, 'x', '2024-01-01')"
        )
    conn.close()

    extra = tmp_path / "extra_versions"
    extra.mkdir()
    (extra / "9999_test_batch.py").write_text(BATCH_MIGRATION)
    cfg = alembic_config(url)
    cfg.set_main_option(
        "version_locations", os.pathsep.join([str(migrations_dir() / "versions"), str(extra)])
    )
    command.upgrade(cfg, "heads")

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM utterances").fetchone()[0] == 1
        assert "note" in [r[1] for r in conn.execute("PRAGMA table_info(speakers)")]
    finally:
        conn.close()
