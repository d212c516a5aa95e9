"""`voicesearch export [--backend onnx|onnx-int8] [--calibration DIR]`: build the ONNX exports now.

The service builds a missing export on its first start anyway (~10 s per model for FP32, plus
~10-20 s of INT8 calibration, on 2 cores); this command does it ahead, with progress bars, and
reports what each configured model will run as. Exports are cached under
``<model_cache_dir>/onnx`` keyed by the checkpoint's sha256 and the exporter version; a valid
one is reused, a stale or corrupt one rebuilt (``service.pipeline.backends.export_cache``).
``--backend onnx-int8`` builds both the FP32 and the INT8 model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.core.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export the configured models to ONNX (FP32 and INT8) ahead of the first start",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument(
        "--backend",
        choices=["onnx", "onnx-int8"],
        default="onnx-int8",
        help="onnx: FP32 only; onnx-int8 (default): FP32 and INT8",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        help="folder of audio files to calibrate INT8 on (default: the configured "
        "int8_calibration_dir, else the speech shipped with the package)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from service.bootstrap import load_models

    if args.calibration is not None and not args.calibration.is_dir():
        print(f"error: {args.calibration} is not a directory", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {"backend": args.backend}
    if args.calibration is not None:
        overrides["int8_calibration_dir"] = args.calibration
    chosen = settings.model_copy(update=overrides)

    def bar(desc: str, total: int) -> tqdm:
        return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=args.no_progress)

    models = load_models(chosen, progress=bar)
    failed = 0
    for role, status in models.statuses.items():
        if not status.enabled:
            print(f"{role}: switched off")
        elif not status.loaded:
            failed += 1
            print(f"{role}: NOT exported: {status.error}")
        elif not (status.backend or "").startswith(args.backend):
            failed += 1  # loaded, but on the torch fallback: the export itself failed
            print(f"{role}: NOT exported: runs on {status.backend}")
        else:
            print(f"{role}: {status.backend}, identity {status.identity}")
    root = chosen.resolved_model_cache_dir / "onnx"
    for path in sorted(root.glob("*/*.onnx")):
        print(f"  {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 1 if failed else 0
