"""`voicesearch` command line: run the service and the operator's chores.

voicesearch serve [--host H] [--port P] [--workers N]
voicesearch doctor [--json]
voicesearch db upgrade | current
voicesearch index rebuild [--space NAME] | verify
voicesearch identify FILE [--language L] [--num-speakers N | --max-speakers N]
voicesearch export [--backend onnx|onnx-int8] [--calibration DIR]

Each subcommand is a module of ``service.commands`` (see its docstring); this module only parses
the command line, sets up logging, reads the settings and dispatches. ``--log-level`` is accepted
before or after the subcommand. A configuration mistake (a malformed setting, a bad API key) is
one line naming the variable and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from service.core.config_errors import ConfigurationError, load_settings
from service.core.logs import LEVELS, configure
from service.pipeline.threads import quiet_openmp

#: The subcommands, in the order ``--help`` lists them: service/commands/<name>.py each.
COMMANDS = (
    "serve",
    "doctor",
    "db",
    "index",
    "eval",
    "enroll_dir",
    "calibrate",
    "identify",
    "export",
    "migrate_store",
)

#: Exit status of a configuration mistake (like argparse's usage errors).
EXIT_CONFIG = 2


def _command_modules() -> list[ModuleType]:
    return [importlib.import_module(f"service.commands.{name}") for name in COMMANDS]


def _log_level_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.lower,
        choices=LEVELS,
        help="debug, info, warning, error (third-party chatter is shown at debug only)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicesearch", description=__doc__.split("\n")[0])
    _log_level_option(parser, "info")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _command_modules():
        module.add_parser(sub)
    # The same option after the subcommand (`voicesearch db upgrade --log-level warning`), at
    # every depth. SUPPRESS: when it is not given there, the value given before the subcommand
    # (or the default) stays.
    _add_to_subcommands(parser)
    return parser


def _add_to_subcommands(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:  # argparse has no public way to walk its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _log_level_option(subparser, argparse.SUPPRESS)
                _add_to_subcommands(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything imports torch: its OpenMP threads must sleep, not spin, on a shared CPU.
    quiet_openmp()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    configure(args.log_level)
    try:
        settings = load_settings()
        if settings.log_format != "text":  # known only now: it may come from .env
            configure(args.log_level, settings.log_format)
        if args.command == "serve":
            from service.commands import serve

            # The workers read the settings again themselves; serve may re-exec this command.
            return serve.run(args, argv, settings)
        return args.handler(args, settings)
    except ConfigurationError as exc:
        print(f"voicesearch: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
