"""Run the Alembic migrations shipped in the ``migrations`` package.

The Alembic ``Config`` is built in code with ``script_location`` pointing at the installed
package directory, so ``voicesearch db upgrade`` works from a wheel install and from any working
directory. Migrations are the only way the schema changes.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

import migrations
from storage.db import make_engine


def migrations_dir() -> Path:
    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        # Passed as an attribute, not a main option: ConfigParser would treat a '%' in a
        # password as interpolation syntax.
        cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise RuntimeError("no migrations found")
    return head


def upgrade_to_head(url: str) -> None:
    """Bring the database at ``url`` to the newest schema. Safe to run again, and from several
    processes at once (SQLite: the upgrade runs inside one ``BEGIN IMMEDIATE`` transaction)."""
    command.upgrade(alembic_config(url), "head")


def current_revision(url: str) -> str | None:
    """The revision the database is at, or ``None`` for an empty (never migrated) database."""
    sa_url = make_url(url)
    database = sa_url.database
    if (
        sa_url.get_backend_name() == "sqlite"
        and database
        and database != ":memory:"
        and not database.startswith("file:")
        and not Path(database).expanduser().exists()
    ):
        return None  # asking must not create an empty database file
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
