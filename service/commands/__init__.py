"""Operator commands beyond serve/db/index, one module each.

Each module exposes ``add_parser(subparsers) -> None`` (registering one subcommand whose
``set_defaults(handler=run)``) and ``run(args, settings) -> int``. ``service.cli`` lists them.
"""
