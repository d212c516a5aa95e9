"""`voicesearch enroll-dir DIR`: bulk enrollment, one speaker per sub-folder.

The sub-folder's name is the speaker's external id (and name); every audio file directly inside
it is one utterance. Goes through ``VoiceSearch.enroll`` / ``add_utterances`` (same decoding,
checks and embeddings as the HTTP API), writing to the configured data directory; a speaker
that already exists is skipped (or topped up with ``--add``). A speaker whose files fail
(undecodable, too short…) is reported and skipped; the others go on.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from service.core.settings import Settings

if TYPE_CHECKING:
    from tqdm import tqdm

    from service.search.enrollment_amount import EnrollmentAmount
    from service.search.voicesearch import VoiceSearch

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".sph"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "enroll-dir",
        help="enroll one speaker per sub-folder of DIR (folder name = speaker id)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--language", help="language of every file (default: detect / unknown)")
    parser.add_argument(
        "--add", action="store_true", help="add the files to speakers that already exist"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def speaker_folders(directory: Path) -> list[tuple[str, list[Path]]]:
    """``(speaker, files)`` per sub-folder holding at least one audio file, sorted by name."""
    out = []
    for folder in sorted(p for p in Path(directory).iterdir() if p.is_dir()):
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
        )
        if files:
            out.append((folder.name, files))
    return out


@dataclass
class EnrollReport:
    """Who needs the operator's attention after a bulk enrollment."""

    skipped: list[str] = field(default_factory=list)  # already enrolled (no --add)
    # (speaker, net speech s, required s): stored, but not searchable until more audio is added
    incomplete: list[tuple[str, float, float]] = field(default_factory=list)
    # (speaker, net speech s, tier): searchable, but below the recommended amount
    below_recommended: list[tuple[str, float, str]] = field(default_factory=list)
    recommended_s: float = 0.0
    tiers: dict[str, int] = field(default_factory=dict)  # tier -> speakers

    def add(self, speaker: str, amount: EnrollmentAmount) -> None:
        """Record one speaker's enrollment amount (after its last file)."""
        self.tiers[amount.tier] = self.tiers.get(amount.tier, 0) + 1
        self.recommended_s = amount.recommended_speech_s
        if not amount.searchable:
            self.incomplete.append((speaker, amount.speech_s, amount.required_speech_s))
        elif amount.warnings:
            self.below_recommended.append((speaker, amount.speech_s, amount.tier))

    def lines(self) -> list[str]:
        out = []
        if self.tiers:
            order = [tier for tier in ("good", "fair", "weak") if tier in self.tiers]
            counts = ", ".join(f"{tier} {self.tiers[tier]}" for tier in order)
            out.append(
                f"enrollment amount (net speech per speaker; good >= {self.recommended_s:g} s, "
                f"weak < 3 s): {counts}"
            )
        if self.incomplete:
            names = ", ".join(f"{s} ({have:.1f} s)" for s, have, _ in self.incomplete[:20])
            more = f" and {len(self.incomplete) - 20} more" if len(self.incomplete) > 20 else ""
            out.append(
                f"NOT SEARCHABLE YET (below the {self.incomplete[0][2]:g} s net-speech "
                f"enrollment minimum): {names}{more}; add recordings to their folders and run "
                "again with --add"
            )
        if self.below_recommended:
            shown = self.below_recommended[:20]
            names = ", ".join(f"{s} ({have:.1f} s, {tier})" for s, have, tier in shown)
            extra = len(self.below_recommended) - len(shown)
            more = f" and {extra} more" if extra > 0 else ""
            out.append(
                f"below the recommended {self.recommended_s:g} s of net speech (searchable, but "
                f"less accurate; add recordings and run again with --add): {names}{more}"
            )
        if self.skipped:
            names = ", ".join(self.skipped[:20])
            more = f" and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
            out.append(f"skipped (already enrolled; --add adds their files): {names}{more}")
        return out


async def enroll_all(
    voicesearch: VoiceSearch,
    folders: list[tuple[str, list[Path]]],
    *,
    language: str | None,
    add: bool,
    bar: tqdm,
    report: EnrollReport | None = None,
) -> dict[str, int]:
    from service.core import errors

    report = report if report is not None else EnrollReport()
    limit = voicesearch.settings.max_files_per_enrollment
    counts = {"enrolled": 0, "added": 0, "skipped": 0, "failed": 0, "files": 0}
    for speaker, files in folders:
        chunks = [files[i : i + limit] for i in range(0, len(files), limit)]
        try:
            try:
                result = await voicesearch.enroll(
                    [p.read_bytes() for p in chunks[0]],
                    external_id=speaker,
                    name=speaker,
                    metadata={"source": "enroll-dir"},
                    language=language,
                )
                counts["enrolled"] += 1
            except errors.DuplicateSpeaker:
                if not add:
                    counts["skipped"] += 1
                    report.skipped.append(speaker)
                    bar.update(1)
                    continue
                result = await voicesearch.add_utterances(
                    speaker, [p.read_bytes() for p in chunks[0]], language
                )
                counts["added"] += 1
            for chunk in chunks[1:]:
                result = await voicesearch.add_utterances(
                    speaker, [p.read_bytes() for p in chunk], language
                )
            counts["files"] += len(files)
            report.add(speaker, result.amount)
        except errors.ServiceError as exc:
            counts["failed"] += 1
            bar.write(f"{speaker}: not enrolled: {exc.code}: {exc}")
        bar.update(1)
    return counts


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from service.bootstrap import build_voicesearch, load_models, open_database

    if not args.directory.is_dir():
        print(f"error: {args.directory} is not a directory", file=sys.stderr)
        return 2
    folders = speaker_folders(args.directory)
    if not folders:
        print(f"error: no sub-folder of {args.directory} holds audio files", file=sys.stderr)
        return 2
    models = load_models(settings)
    if not models.encoders:
        print("error: no speaker encoder could be loaded; see the log", file=sys.stderr)
        return 2
    engine = open_database(settings)
    try:
        voicesearch = build_voicesearch(settings, models, engine)
        started = time.perf_counter()
        report = EnrollReport()
        with tqdm(total=len(folders), unit="spk", file=sys.stderr, disable=args.no_progress) as bar:
            counts = asyncio.run(
                enroll_all(
                    voicesearch,
                    folders,
                    language=args.language,
                    add=args.add,
                    bar=bar,
                    report=report,
                )
            )
        seconds = time.perf_counter() - started
        voicesearch.gallery.snapshot()
    finally:
        engine.dispose()
    done = counts["enrolled"] + counts["added"]
    rate = 60.0 * done / seconds if seconds > 0 else 0.0
    print(
        f"enrolled {counts['enrolled']}, added to {counts['added']}, skipped {counts['skipped']} "
        f"existing, failed {counts['failed']}; {counts['files']} files in {seconds:.1f}s "
        f"({rate:.1f} speakers/minute)"
    )
    for line in report.lines():
        print(line)
    return 1 if counts["failed"] else 0
