"""The ``voicesearch`` subcommands, one module each (``service.cli`` lists and dispatches them).

Each module exposes ``add_parser(subparsers) -> None`` (registering one subcommand whose
``set_defaults(handler=run)``) and ``run(args, settings) -> int``. ``serve`` is the exception:
``run(args, argv)``, because its workers read the settings themselves.
"""
