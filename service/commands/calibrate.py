"""`voicesearch calibrate MANIFEST --target-far 0.01 [--root DIR] [--dry-run] [--json FILE]`:
measure genuine/impostor scores on labelled audio through the service's own pipeline and store
per-space thresholds (and a score → probability calibration) in the database.

The service then uses the newest calibration whose model identity (and score type: cosine or
AS-norm, per ``VOICESEARCH_ASNORM_SPACES``) matches what it runs; ``GET /calibration`` shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.core.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="measure and store decision thresholds on labelled audio",
        description="Enroll the manifest's enroll rows and score its probe rows (CSV: "
        "path,speaker,role[,language]; role enroll|probe; probes of unenrolled speakers are "
        "open-set impostors) in a fresh temporary store through the service's pipeline "
        "(decode, VAD, encoder, gallery, AS-norm where on). Per encoder space: the lowest "
        "threshold whose FAR <= --target-far, the EER and a logistic calibration, stored in the "
        "database with the model identity, score type, data sizes and date.",
    )
    parser.add_argument("manifest", type=Path)
    parser.add_argument(
        "--root", type=Path, help="folder the manifest's paths are relative to (default: its own)"
    )
    parser.add_argument(
        "--target-far", type=float, default=0.01, help="false-accept rate to meet (0.01 = 1%%)"
    )
    parser.add_argument("--dry-run", action="store_true", help="measure and print; store nothing")
    parser.add_argument("--json", type=Path, dest="json_path", help="write the figures as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from service.bootstrap import load_models, open_database
    from service.evaluation.calibrate import calibrate, store_calibrations
    from service.evaluation.trials import read_manifest
    from storage.calibration import CalibrationStore
    from storage.db import make_session_factory

    if not 0.0 <= args.target_far < 1.0:
        print("error: --target-far must be in [0, 1)", file=sys.stderr)
        return 2
    rows = read_manifest(args.manifest, args.root)
    models = load_models(settings)
    if not models.encoders:
        print("error: no speaker encoder could be loaded; see the log", file=sys.stderr)
        return 2
    try:
        results = calibrate(
            settings,
            models,
            rows,
            args.target_far,
            show_progress=not getattr(args, "no_progress", False),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {space: c.summary() for space, c in results.items()}
    for space, f in summary.items():
        print(
            f"{space} ({f['score_type']}): threshold {f['threshold']:.4f} "
            f"at target FAR {args.target_far:g} -> FAR {f['far']:.2%}, FRR {f['frr']:.2%}; "
            f"EER {f['eer']:.2%} at {f['eer_threshold']:.4f}; genuine min "
            f"{f['genuine_min']:.4f}, impostor max {f['impostor_max']:.4f}; {f['n_genuine']} "
            f"genuine / {f['n_impostor']} impostor trials, {f['n_speakers']} speakers"
        )
    if args.json_path:
        args.json_path.write_text(json.dumps(summary, indent=2) + "\n")
    if args.dry_run:
        print("dry run: nothing stored")
        return 0
    engine = open_database(settings)
    try:
        records = store_calibrations(
            CalibrationStore(make_session_factory(engine)), results, source=str(args.manifest)
        )
    finally:
        engine.dispose()
    for record in records:
        print(f"stored calibration {record.id} for {record.space} ({record.model_identity})")
    return 0
