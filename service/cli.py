"""`voicesearch` command line: run the service and the operator's chores.

voicesearch serve [--host H] [--port P] [--workers N]
voicesearch db upgrade | current
voicesearch index rebuild [--space NAME] | verify
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from service.core.settings import Settings

if TYPE_CHECKING:
    from service.search.voicesearch import VoiceSearch

# glibc hands freed memory back to the OS eagerly, so every inference re-faults its activation
# buffers: about a third of PyTorch's CPU time on a 2-core box. Keeping freed memory (these two
# knobs) measured 1.5x faster. They must be in the environment before the process starts.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _with_malloc_tuning(argv: Sequence[str]) -> None:
    """Re-exec this command once with the allocator settings, unless the operator set them."""
    if os.environ.get("VOICESEARCH_NO_MALLOC_TUNING") or all(k in os.environ for k in MALLOC_ENV):
        return
    env = {**MALLOC_ENV, **os.environ}
    os.execve(sys.executable, [sys.executable, "-m", "service.cli", *argv], env)


def cmd_serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _with_malloc_tuning(argv)
    import uvicorn

    if args.workers > 1 and "VOICESEARCH_TORCH_THREADS" not in os.environ:
        # N workers each using every core would oversubscribe the CPU; share the cores out.
        cores = os.cpu_count() or 1
        os.environ["VOICESEARCH_TORCH_THREADS"] = str(max(1, cores // args.workers))
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
    )
    return 0


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
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


def _open_for_index_work(settings: Settings) -> VoiceSearch:
    """Load the speaker encoders (not language ID: rebuilds need only model identities)."""
    from service.app import build_voicesearch, open_database
    from service.pipeline.registry import ModelRegistry

    sources = {role: src for role, src in settings.model_sources.items() if role != "langid"}
    models = ModelRegistry.load(
        sources, cache_dir=settings.resolved_model_cache_dir, device=settings.device
    )
    for role, status in models.statuses.items():
        if not status.loaded:
            print(f"warning: {role} model not loaded ({status.error}); skipping its index")
    return build_voicesearch(settings, models, open_database(settings))


def _audit_rebuild(voicesearch: VoiceSearch, space: str, count: int, generation: int) -> None:
    """Record an operator's index rebuild in the audit log (as the OS user who ran it)."""
    import getpass

    from storage import audit

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    record = audit.AuditRecord(
        audit.ACTION_INDEX_REBUILD,
        audit.Actor(f"cli:{user}", "operator"),
        {"space": space, "speakers": count, "generation": generation},
    )
    audit.record(voicesearch.store.session_factory, record)


def cmd_index(args: argparse.Namespace, settings: Settings) -> int:
    voicesearch = _open_for_index_work(settings)
    gallery = voicesearch.gallery
    spaces = [args.space] if getattr(args, "space", None) else sorted(gallery.dims)
    unknown = [s for s in spaces if s not in gallery.dims]
    if unknown:
        print(f"error: no loaded encoder for space(s) {', '.join(unknown)}", file=sys.stderr)
        return 2

    if args.index_command == "rebuild":
        from tqdm import tqdm

        for space in spaces:
            started = time.perf_counter()
            with tqdm(desc=f"rebuild {space}", unit="spk", file=sys.stderr) as bar:

                def progress(done: int, total: int, bar: tqdm = bar) -> None:
                    bar.total = total
                    bar.n = done
                    bar.refresh()

                report = gallery.rebuild(space, progress=progress)
            _audit_rebuild(voicesearch, space, report.count, report.generation)
            print(
                f"{space}: {report.count} speakers indexed in "
                f"{time.perf_counter() - started:.2f}s (generation {report.generation})"
            )
        return 0

    reports = gallery.verify()
    failed = False
    for space in spaces:
        report = reports[space]
        print(f"{space}: {report}")
        failed |= not report.ok
    print("index verify: " + ("MISMATCH" if failed else "ok"))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicesearch", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate the database to the newest schema")
    db_sub.add_parser("current", help="show the schema revision")

    index = sub.add_parser("index", help="FAISS indexes")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    rebuild = index_sub.add_parser("rebuild", help="rebuild indexes from the database")
    rebuild.add_argument("--space", help="only this encoder space")
    index_sub.add_parser("verify", help="compare every index with the database")

    for module in _command_modules():
        module.add_parser(sub)
    return parser


def _command_modules() -> list[ModuleType]:
    """The operator commands that live in service/commands (see its docstring)."""
    import importlib

    names: list[str] = ["eval", "enroll_dir", "calibrate"]  # each: service/commands/<name>.py
    return [importlib.import_module(f"service.commands.{name}") for name in names]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    if args.command == "serve":
        return cmd_serve(args, argv)
    settings = Settings()
    if args.command == "db":
        return cmd_db(args, settings)
    if args.command == "index":
        return cmd_index(args, settings)
    return args.handler(args, settings)


if __name__ == "__main__":
    sys.exit(main())
