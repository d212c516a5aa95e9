"""`voicesearch index rebuild [--space NAME] | verify`: rebuild the indexes (FAISS, or the
Milvus collections) from the database (live-safe: running workers reload), or compare them with
it (non-zero if they differ).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from service.core.settings import Settings

if TYPE_CHECKING:
    from service.pipeline.registry import ModelRegistry
    from service.search.voicesearch import VoiceSearch


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    index = subparsers.add_parser("index", help="FAISS indexes")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    rebuild = index_sub.add_parser("rebuild", help="rebuild indexes from the database")
    rebuild.add_argument("--space", help="only this encoder space")
    index_sub.add_parser("verify", help="compare every index with the database")
    index.set_defaults(handler=run)


def load_encoders(settings: Settings) -> ModelRegistry:
    """Load the speaker encoders (not language ID: index work needs only model identities), on
    the configured backend: an INT8 space has an identity of its own."""
    from service.pipeline.registry import ModelRegistry

    sources = {role: src for role, src in settings.model_sources.items() if role != "langid"}
    models = ModelRegistry.load(
        sources,
        cache_dir=settings.resolved_model_cache_dir,
        device=settings.device,
        inference=settings.inference(),
    )
    for role, status in models.statuses.items():
        if status.enabled and not status.loaded:
            print(f"warning: {role} model not loaded ({status.error}); skipping its index")
    return models


def _open_for_index_work(settings: Settings) -> VoiceSearch:
    from service.bootstrap import build_voicesearch, open_database

    return build_voicesearch(settings, load_encoders(settings), open_database(settings))


def _audit_rebuild(voicesearch: VoiceSearch, space: str, count: int, generation: int) -> None:
    """Record an operator's index rebuild in the audit log (as the OS user who ran it)."""
    from service.commands.actor import cli_actor
    from storage import audit

    record = audit.AuditRecord(
        audit.ACTION_INDEX_REBUILD,
        cli_actor(),
        {"space": space, "speakers": count, "generation": generation},
    )
    audit.record(voicesearch.store.session_factory, record)


def run(args: argparse.Namespace, settings: Settings) -> int:
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

    # An encoder that could not be loaded has no index here: nothing of its space was checked,
    # and "ok" would claim otherwise (issue 10 item 11).
    skipped = {
        role: status.error or "not loaded"
        for role, status in voicesearch.models.statuses.items()
        if status.enabled
        and not status.loaded
        and role != "langid"
        and not getattr(args, "space", None)  # one named space: it is loaded (checked above)
    }
    for role, why in sorted(skipped.items()):
        print(f"{role}: NOT VERIFIED (encoder not loaded: {why})")
    if not spaces:
        print("index verify: nothing verified: no speaker encoder could be loaded")
        return 1
    reports = gallery.verify()
    failed = bool(skipped)
    for space in spaces:
        report = reports[space]
        print(f"{space}: {report}")
        failed |= not report.ok
    verdict = "MISMATCH" if any(not reports[s].ok for s in spaces) else "ok"
    if skipped and verdict == "ok":
        verdict = f"INCOMPLETE ({', '.join(sorted(skipped))} not verified)"
    print("index verify: " + verdict)
    return 1 if failed else 0
