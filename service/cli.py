"""`voicesearch` command line: run the service and the operator's chores.

voicesearch serve [--host H] [--port P] [--workers N]
voicesearch db upgrade | current
voicesearch index rebuild [--space NAME] | verify
voicesearch export [--backend onnx|onnx-int8] [--calibration DIR]

Each subcommand is a module of ``service.commands`` (see its docstring); this module only parses
the command line, sets up logging and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from service.core.settings import Settings
from service.pipeline.threads import quiet_openmp

#: The subcommands, in the order ``--help`` lists them: service/commands/<name>.py each.
COMMANDS = ("serve", "db", "index", "eval", "enroll_dir", "calibrate", "export")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _command_modules() -> list[ModuleType]:
    return [importlib.import_module(f"service.commands.{name}") for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicesearch", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _command_modules():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything imports torch: its OpenMP threads must sleep, not spin, on a shared CPU.
    quiet_openmp()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    if args.command == "serve":
        from service.commands import serve

        # The workers read the settings themselves; serve may re-exec this command line.
        return serve.run(args, argv)
    return args.handler(args, Settings())


if __name__ == "__main__":
    sys.exit(main())
