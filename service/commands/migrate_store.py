"""`voicesearch migrate-store`: copy an installation into another database and vector store
(SQLite + FAISS ⇄ PostgreSQL + Milvus, or any mix), then verify the target's index.

    voicesearch migrate-store --from-database sqlite:///data/voicesearch.db \\
        --to-database postgresql+psycopg://vs@db/vs --to-store milvus \\
        --to-milvus-uri http://milvus:19530

The database is the source of truth and holds every vector (utterance embeddings and the
profiles the indexes are made of), so the records are copied row for row (``storage.copy``:
ids kept, resumable, the source only read) and the target's vector store is then built from
the copied profiles — the source's FAISS snapshots or Milvus collections are never read, so a
stale or damaged source index cannot leak into the target. Whatever the target store held
before for these spaces is discarded first. Then ``index verify`` runs on the target and its
result is printed; the exit status is non-zero if it is not ``ok``.

Models: the speaker encoders of the current settings are loaded (as for ``index verify``):
profiles are indexed only for the loaded model, as the service does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.core.settings import Settings
from service.decisions.bandwidth import narrowband_space


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    cmd = subparsers.add_parser(
        "migrate-store",
        help="copy records and vectors into another database + vector store, then verify",
    )
    cmd.add_argument(
        "--from-database", help="source SQLAlchemy URL (default: the configured database)"
    )
    cmd.add_argument("--to-database", required=True, help="target SQLAlchemy URL")
    cmd.add_argument(
        "--to-store", choices=("faiss", "milvus"), required=True, help="target vector store"
    )
    cmd.add_argument("--to-milvus-uri", help="target Milvus URI (with --to-store milvus)")
    cmd.add_argument("--to-milvus-token", help="target Milvus token")
    cmd.add_argument("--to-milvus-prefix", help="target collection prefix (default: the setting)")
    cmd.add_argument(
        "--to-data-dir",
        type=Path,
        help="target data directory (its index/ holds the FAISS snapshots); needed with "
        "--to-store faiss, so the source's snapshots are never touched",
    )
    mode = cmd.add_mutually_exclusive_group()
    mode.add_argument(
        "--replace", action="store_true", help="empty a target that already holds records"
    )
    mode.add_argument("--resume", action="store_true", help="continue a copy that was interrupted")
    cmd.add_argument("--batch", type=int, default=2_000, help="rows per target transaction")
    cmd.set_defaults(handler=run)


def target_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    update: dict[str, object] = {
        "database_url": args.to_database,
        "vector_store": args.to_store,
        "milvus_uri": args.to_milvus_uri or settings.milvus_uri,
    }
    if args.to_milvus_token:
        update["milvus_token"] = args.to_milvus_token
    if args.to_milvus_prefix:
        update["milvus_collection_prefix"] = args.to_milvus_prefix
    if args.to_data_dir:
        update["data_dir"] = args.to_data_dir
    target = Settings.model_validate({**settings.model_dump(), **update})
    return target


def _discard_target_index(target: Settings, spaces: list[str]) -> None:
    """Forget what the target store held for these spaces: it described other records."""
    section = target.vector_store_settings()
    if section.kind == "faiss":
        for space in spaces:
            (target.data_dir / "index" / f"{space}.faiss").unlink(missing_ok=True)
        return
    from index.milvus_collections import MilvusCollections

    assert section.milvus_uri is not None
    collections = MilvusCollections(
        section.milvus_uri, token=section.milvus_token, prefix=section.milvus_prefix
    )
    collections.ensure_state()
    for space in spaces:
        collections.forget(space)
    collections.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from service.bootstrap import build_voicesearch, open_database
    from service.commands.index import load_encoders
    from storage.copy import TargetNotEmpty, copy_database
    from storage.db import make_engine
    from storage.migrate import current_revision, head_revision, upgrade_to_head

    source_url = args.from_database or settings.resolved_database_url
    if args.to_store == "milvus" and not (args.to_milvus_uri or settings.milvus_uri):
        print("error: --to-store milvus needs --to-milvus-uri", file=sys.stderr)
        return 2
    if args.to_store == "faiss" and not args.to_data_dir:
        print(
            "error: --to-store faiss needs --to-data-dir (a directory of its own)", file=sys.stderr
        )
        return 2
    if current_revision(source_url) != head_revision():
        print(
            f"error: the source database is not at the newest schema ({head_revision()}): "
            "run `voicesearch db upgrade` on it first",
            file=sys.stderr,
        )
        return 2
    target = target_settings(args, settings)
    if (
        settings.vector_store == "milvus"
        and target.vector_store == "milvus"
        and target.milvus_uri == settings.milvus_uri
        and target.milvus_collection_prefix == settings.milvus_collection_prefix
    ):
        # The same Milvus and prefix as the running installation: the target's rebuild would
        # drop the collections the source's nodes are serving from.
        print(
            "error: the target Milvus and collection prefix are the ones this installation "
            "uses: pass another --to-milvus-prefix (or --to-milvus-uri)",
            file=sys.stderr,
        )
        return 2
    target.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(target.resolved_database_url)
    source_engine = make_engine(source_url)
    target_engine = make_engine(target.resolved_database_url)
    mode = "replace" if args.replace else "resume" if args.resume else "refuse"
    bars: dict[str, tqdm] = {}

    def progress(table: str, done: int, total: int) -> None:
        bar = bars.get(table)
        if bar is None:
            bar = bars[table] = tqdm(desc=f"copy {table}", unit="row", file=sys.stderr)
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        report = copy_database(
            source_engine, target_engine, mode=mode, batch=args.batch, progress=progress
        )
    except TargetNotEmpty as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        for bar in bars.values():
            bar.close()
        source_engine.dispose()
        target_engine.dispose()
    print(
        "copied: "
        + ", ".join(f"{t}={report.copied[t]}" for t in report.copied)
        + " (target now: "
        + ", ".join(f"{t}={n}" for t, n in report.rows.items())
        + ")"
    )

    models = load_encoders(target)
    # The derived telephone-band spaces too: their old vectors described other records.
    spaces = sorted({*models.encoders, *(narrowband_space(s) for s in models.encoders)})
    _discard_target_index(target, spaces)
    voicesearch = build_voicesearch(target, models, open_database(target))
    try:
        reports = voicesearch.gallery.verify()
    finally:
        voicesearch.gallery.close()
    failed = False
    for space, result in sorted(reports.items()):
        print(f"{space}: {result}")
        failed |= not result.ok
    print(f"index verify ({args.to_store}): " + ("MISMATCH" if failed else "ok"))
    return 1 if failed else 0
