"""Who an operator command acts as in the audit log: the OS user who ran it."""

from __future__ import annotations

import getpass

from storage.audit import Actor


def cli_actor() -> Actor:
    """``cli:<user>`` with the role ``operator`` (the user is "unknown" where the OS has none)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", "operator")
