"""`voicesearch calibrate MANIFEST [--fpir-target 0.03] [--root DIR] [--dry-run] [--json FILE]`:
fit the open-set decision rule on labelled audio through the service's own pipeline and store it.
`voicesearch calibrate --withdraw SPACE`: delete the space's stored calibrations (audited), so
that the shipped rule is in force again.

Per space: the exponential tail (u, β) of the impostor scores, which sets t(N) for any gallery
size N so that at most the FPIR target of unenrolled voices are matched; FPIR and FNIR measured
on the manifest's gallery, and predicted (a model, labelled so) at the live gallery size and at
N = 10, 100, 1000. The service then uses the newest calibration whose model identity and score
type (cosine or AS-norm) match what it runs; ``GET /calibration`` shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from service.core.settings import SPACE_CNCELEB, SPACE_VOXCELEB, Settings

if TYPE_CHECKING:
    from service.pipeline.registry import ModelRegistry


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="measure and store decision thresholds on labelled audio",
        description="Enroll the manifest's enroll rows and score its probe rows (CSV: "
        "path,speaker,role[,language]; role enroll|probe; probes of unenrolled speakers are "
        "open-set impostors) in a fresh temporary store through the service's pipeline "
        "(decode, VAD, encoder, gallery, AS-norm where on). Per encoder space: the impostor "
        "score tail (u, beta) that sets the threshold t(N) for the FPIR target at any gallery "
        "size N, FPIR/FNIR measured on the manifest and predicted at the live gallery size and "
        "N = 10, 100, 1000, the EER and a logistic calibration, stored in the database with the "
        "model identity, score type, data sizes and date.",
    )
    parser.add_argument("manifest", type=Path, nargs="?", help="labelled audio (CSV)")
    parser.add_argument(
        "--withdraw",
        metavar="SPACE",
        help="delete SPACE's stored calibrations instead (recorded in the audit log): the "
        "shipped rule is in force again; running workers follow within 30 s",
    )
    parser.add_argument(
        "--root", type=Path, help="folder the manifest's paths are relative to (default: its own)"
    )
    parser.add_argument(
        "--fpir-target",
        type=float,
        default=None,
        help="share of unenrolled voices allowed to be matched, reported with the fit "
        "(default: VOICESEARCH_FPIR_TARGET, 0.03); the service applies the setting in force",
    )
    parser.add_argument(
        "--target-far", type=float, default=None, help=argparse.SUPPRESS
    )  # the old pair-FAR target: refused with a pointer to --fpir-target
    parser.add_argument("--dry-run", action="store_true", help="measure and print; store nothing")
    parser.add_argument("--json", type=Path, dest="json_path", help="write the figures as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from service.bootstrap import load_models, open_database
    from service.commands.actor import cli_actor
    from service.evaluation.calibrate import calibrate, store_calibrations
    from service.evaluation.trials import read_manifest
    from storage.calibration import CalibrationStore
    from storage.db import make_session_factory
    from storage.speakers import SpeakerStore

    if getattr(args, "withdraw", None):
        mixed = [flag for flag, value in withdraw_conflicts(args) if value]
        if mixed:
            print(
                f"error: --withdraw deletes stored calibrations and takes no {', '.join(mixed)}",
                file=sys.stderr,
            )
            return 2
        return withdraw(args.withdraw, settings)
    if args.manifest is None:
        print("error: give a MANIFEST to calibrate on, or --withdraw SPACE", file=sys.stderr)
        return 2
    if args.target_far is not None:
        print(
            "error: --target-far (a pair false-accept rate) is gone: 'match' is decided for the "
            "whole gallery now; use --fpir-target (share of unenrolled voices matched)",
            file=sys.stderr,
        )
        return 2
    if args.fpir_target is not None:
        if not 0.0 < args.fpir_target < 1.0:
            print("error: --fpir-target must be in (0, 1)", file=sys.stderr)
            return 2
        settings = settings.model_copy(update={"fpir_target": args.fpir_target})
    rows = read_manifest(args.manifest, args.root)
    models = load_models(settings)
    if not models.encoders:
        print("error: no speaker encoder could be loaded; see the log", file=sys.stderr)
        return 2
    identities = {space: enc.identity for space, enc in models.encoders.items()}
    engine = open_database(settings)
    try:
        # The operator's searchable speakers per space: the N the predictions are made for.
        live_store = SpeakerStore(make_session_factory(engine), identities)
        live = {space: live_store.profile_count(space) for space in identities}
        try:
            results = calibrate(
                settings,
                models,
                rows,
                live_gallery_sizes=live,
                show_progress=not getattr(args, "no_progress", False),
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        summary = {space: c.summary() for space, c in results.items()}
        phone_spaces = telephone_band_spaces(settings, models) & summary.keys()
        for space, f in summary.items():
            print(describe(space, f, live.get(space, 0)))
        if args.json_path:
            args.json_path.write_text(json.dumps(summary, indent=2) + "\n")
        if args.dry_run:
            print("dry run: nothing stored")
            for space in sorted(phone_spaces):
                print("if stored, " + PHONE_NOTE.format(space=space))
            return 0
        records = store_calibrations(
            CalibrationStore(make_session_factory(engine)),
            results,
            source=str(args.manifest),
            actor=cli_actor(),
        )
    finally:
        engine.dispose()
    for record in records:
        print(f"stored calibration {record.id} for {record.space} ({record.model_identity})")
        if record.space in phone_spaces:
            print(PHONE_NOTE.format(space=record.space))
    return 0


#: Printed when a stored calibration switches a space's telephone-band decisions off: the
#: pair-type tails exist for the shipped rule only, so under a calibration a probe of <= 8 kHz
#: audio is decided on the wideband tail fitted here, against the normal profiles.
PHONE_NOTE = (
    "note: while this calibration is in force, {space} probes of <= 8 kHz audio (phone calls) "
    "are no longer scored against the telephone-band profiles, which are decided on the shipped "
    "rule only; they are decided on this fit. Measured on held-out read speech after a "
    "calibration on clean wideband audio: telephone-band FNIR 6.9 % -> 55 % (voicesearch "
    "repository, bench/results/conditions-test-read-calibrated.md). If your probes are phone "
    "calls, measure with --dry-run first; 'voicesearch calibrate --withdraw {space}' puts the "
    "shipped rule back."
)


def telephone_band_spaces(settings: Settings, models: ModelRegistry) -> set[str]:
    """Spaces whose narrowband probes use telephone-band profiles under the shipped rule."""
    from service.decisions.bandwidth import resolve_space_scoring

    try:
        _, views, _ = resolve_space_scoring(settings, models.encoders)
    except (OSError, ValueError):  # the calibration itself already used this scoring
        return set()
    return set(views)


def withdraw_conflicts(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The options that belong to a calibration run, with their values (set: a mistake)."""
    return [
        ("MANIFEST", getattr(args, "manifest", None)),
        ("--root", getattr(args, "root", None)),
        ("--fpir-target", getattr(args, "fpir_target", None)),
        ("--dry-run", getattr(args, "dry_run", False)),
        ("--json", getattr(args, "json_path", None)),
    ]


def withdraw(space: str, settings: Settings) -> int:
    from service.bootstrap import open_database
    from service.commands.actor import cli_actor
    from storage.calibration import CalibrationStore
    from storage.db import make_session_factory

    engine = open_database(settings)
    try:
        store = CalibrationStore(make_session_factory(engine))
        stored = sorted({r.space for r in store.all()})
        if space not in (SPACE_VOXCELEB, SPACE_CNCELEB) and space not in stored:
            print(
                f"error: no space {space!r}; spaces: {SPACE_VOXCELEB}, {SPACE_CNCELEB} "
                f"(stored calibrations: {', '.join(stored) or 'none'})",
                file=sys.stderr,
            )
            return 2
        gone = store.withdraw(space, cli_actor())
    finally:
        engine.dispose()
    if not gone:
        print(f"no stored calibration for {space}: nothing withdrawn")
        return 0
    ids = ", ".join(str(r.id) for r in gone)
    print(
        f"withdrew calibration(s) {ids} of {space} (the audit log keeps what they were); "
        "running workers drop them within 30 s: the shipped rule decides unless a "
        "VOICESEARCH_THRESHOLDS / VOICESEARCH_ASNORM_THRESHOLDS setting does (GET /calibration)"
    )
    return 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def describe(space: str, f: dict, live: int) -> str:
    tail, m = f["tail"], f["measured"]
    lines = [
        f"{space} ({f['score_type']}): impostor tail u {tail['u']:.4f}, beta {tail['beta']:.4f} "
        f"({f['n_impostor']} impostor / {f['n_genuine']} genuine trials, {f['n_speakers']} "
        f"speakers); FPIR target {f['fpir_target']:g}",
        f"  measured at N={m['gallery_size']}: t={m['threshold']:.4f}, FPIR {_pct(m['fpir'])}, "
        f"FNIR {_pct(m['fnir'])}; EER {f['eer']:.2%}",
    ]
    for p in f["predictions"]:
        here = " (your gallery now)" if p["gallery_size"] == live else ""
        lines.append(
            f"  model prediction at N={p['gallery_size']}{here}: t={p['threshold']:.4f}, "
            f"FPIR {_pct(p['fpir'])}, FNIR {_pct(p['fnir'])}"
        )
    classes = f.get("quality_tails") or {}
    for name, c in classes.items():
        a = c["tails"]["A"]
        lines.append(
            f"  probe quality class {name}: own tail u {a['u']:.4f}, beta {a['beta']:.4f} "
            f"({a['n_impostor']} impostor trials); its probes held to the higher of its t(N) "
            "and the pooled one"
        )
    if not classes:
        lines.append(
            "  probe quality classes: none with enough impostor trials for a tail of its own "
            "(2,000, from 50 probes); every probe on the tail above"
        )
    return "\n".join(lines)
