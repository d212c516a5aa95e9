"""`voicesearch identify FILE`: who speaks when in a recording, named from the enrolled speakers.

Runs what ``POST /identify-speakers`` runs (``service.recordings.identify``) against the
configured data directory's speakers, in this process, with a progress bar over the embedded
windows (long recordings take a while on a CPU). Prints the speakers found and the timeline;
``--format json`` prints the HTTP answer's data, ``--format rttm`` RTTM lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from service.core.settings import Settings

if TYPE_CHECKING:
    from service.recordings.identify import RecordingResult


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "identify",
        help="who speaks when in a recording, named from the enrolled speakers",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--language", help="spoken language (default: detect / unknown)")
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--num-speakers", type=int, help="the exact number of voices")
    count.add_argument("--max-speakers", type=int, help="at most this many voices")
    parser.add_argument("--top-n", type=int, default=3, help="candidates listed per voice")
    parser.add_argument("--format", choices=("text", "json", "rttm"), default="text")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes):02d}:{rest:06.3f}"


def text(result: RecordingResult) -> str:
    lines = [
        f"{result.duration_s:.1f} s of audio, {result.speech_s:.1f} s of speech, "
        f"{len(result.speakers)} voice(s) ({result.routed.space} space)",
        "",
        "speakers:",
    ]
    for found in result.speakers:
        best = found.result.best_match
        score = "" if best is None or best.score is None else f"  score {best.score:.3f}"
        closest = "" if best is None or found.result.match else f"  (closest: {best.id})"
        lines.append(
            f"  {found.label:<20} {found.result.verdict:<10} {found.speech_s:6.1f} s"
            f"{score}{closest}"
        )
    lines += ["", "timeline:"]
    lines += [
        f"  {_clock(s.start)} - {_clock(s.end)}  {s.speaker}  ({s.score:.2f})"
        for s in result.segments
    ]
    return "\n".join(lines)


def as_json(result: RecordingResult) -> str:
    return json.dumps(
        {
            "duration_s": round(result.duration_s, 3),
            "speech_s": round(result.speech_s, 3),
            "space": result.routed.space,
            "speakers": [
                {
                    "speaker": f.label,
                    "decision": f.result.verdict,
                    "reason": f.result.reason,
                    "score": None if f.result.best_match is None else f.result.best_match.score,
                    "speech_s": round(f.speech_s, 3),
                    "candidates": [m.id for m in f.result.matches],
                }
                for f in result.speakers
            ],
            "segments": [
                {"start": round(s.start, 3), "end": round(s.end, 3), "speaker": s.speaker}
                for s in result.segments
            ],
        },
        indent=2,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from service.bootstrap import build_voicesearch, load_models, open_database
    from service.core.errors import ServiceError
    from service.recordings.identify import IdentifyOptions, RecordingIdentifier, to_rttm

    if not args.file.is_file():
        print(f"error: {args.file} is not a file", file=sys.stderr)
        return 2
    models = load_models(settings)
    if not models.encoders:
        print("error: no speaker encoder could be loaded; see the log", file=sys.stderr)
        return 2
    engine = open_database(settings)
    try:
        identifier = RecordingIdentifier(
            build_voicesearch(settings, models, engine), settings.recordings()
        )
        options = IdentifyOptions(args.language, args.top_n, args.num_speakers, args.max_speakers)
        with tqdm(total=0, unit="win", file=sys.stderr, disable=args.no_progress) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = identifier.identify_blocking(args.file.read_bytes(), options, progress)
    except ServiceError as exc:
        print(f"error: {exc.code}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if args.format == "json":
        print(as_json(result))
    elif args.format == "rttm":
        print(to_rttm(result, args.file.stem), end="")
    else:
        print(text(result))
    return 0
