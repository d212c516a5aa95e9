"""Alembic environment. Config is built in code by ``storage.migrate`` (no alembic.ini, no
reliance on the working directory); it passes the URL, or an open connection, as attributes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from storage.db import SQLITE_BEGIN_OPTION, make_engine
from storage.dialects import lock_for_migration
from storage.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rewrites the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        # storage.db emits BEGIN itself, which makes SQLite DDL transactional: the whole upgrade
        # (every revision plus the alembic_version update) commits or rolls back as one.
        transactional_ddl=True,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                # SQLite's documented procedure for schema changes: foreign keys OFF (only
                # possible outside a transaction) while tables are rebuilt. Otherwise a batch
                # migration's "copy table, DROP the old one" would run ON DELETE CASCADE and
                # silently delete every utterance and profile of every speaker.
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = OFF")
            # BEGIN IMMEDIATE: two processes upgrading at once serialize on the write lock; the
            # second then reads the already-updated alembic_version inside its own transaction
            # and has nothing to do (instead of both running CREATE TABLE).
            conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            _configure(conn)
            with context.begin_transaction():
                if conn.dialect.name == "postgresql":
                    # The same serialisation on PostgreSQL: an advisory lock, held to COMMIT.
                    lock_for_migration(conn)
                context.run_migrations()
                if sqlite:
                    # ...and prove the rebuilt tables still reference valid rows before COMMIT.
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
    finally:
        # The connection goes back to the pool with foreign keys off: drop them all.
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
