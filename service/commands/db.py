"""`voicesearch db upgrade | current`: migrate the database schema, or show its revision."""

from __future__ import annotations

import argparse

from service.core.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate the database to the newest schema")
    db_sub.add_parser("current", help="show the schema revision")
    db.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from storage.migrate import current_revision, head_revision, upgrade_to_head

    url = settings.resolved_database_url
    if args.db_command == "upgrade":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade_to_head(url)
        print(f"database at {head_revision()} (head): {url}")
    else:
        current = current_revision(url)
        print(f"current: {current or 'empty'}  head: {head_revision()}")
    return 0
