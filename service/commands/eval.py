"""`voicesearch eval MANIFEST [--root DIR] [--json FILE] [--out DIR]`: accuracy of the service on a
labelled manifest, next to SpeechBrain used directly (see ``service.evaluation.evaluate``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from service.core.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="identification / verification accuracy on a labelled manifest",
        description="Enroll and probe the manifest (CSV: path,speaker,role[,language]; role "
        "enroll|probe) in a fresh temporary store through the service's pipeline, and with "
        "SpeechBrain's EncoderClassifier directly. Language per row: the manifest's language "
        "column; else language ID when its model loads; else none (voxceleb space).",
    )
    parser.add_argument("manifest", type=Path)
    parser.add_argument(
        "--root", type=Path, help="folder the manifest's paths are relative to (default: its own)"
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="write the figures as JSON")
    parser.add_argument(
        "--out", type=Path, help="write <stem>.md, <stem>-det.png (and .json) into this folder"
    )
    parser.add_argument("--name", help="stem of the files in --out (default: eval-<manifest>)")
    parser.add_argument(
        "--language",
        help="language of rows whose language column is empty or 'unknown' (default: none: "
        "detected when the language-ID model loads, else the voxceleb space is used)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from service.bootstrap import load_models
    from service.evaluation.evaluate import evaluate, markdown, write_outputs
    from service.evaluation.trials import read_manifest

    rows = read_manifest(args.manifest, args.root)
    if args.language:
        rows = [r if r.language else replace(r, language=args.language) for r in rows]
    models = load_models(settings)
    if not models.encoders:
        print("error: no speaker encoder could be loaded; see the log", file=sys.stderr)
        return 2
    evaluation = evaluate(
        settings, models, rows, args.manifest, show_progress=not getattr(args, "no_progress", False)
    )
    stem = args.name or f"eval-{args.manifest.stem}"
    written = write_outputs(evaluation, args.out, args.json_path, stem)
    print(markdown(evaluation, None))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0
