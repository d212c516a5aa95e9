"""Secrets never reach the access log.

uvicorn's access log writes every request's path *with its query string*. A client that sends
its API key as ``?api_key=…`` is refused (keys go in headers only), but the key was logged all
the same. :class:`QuerySecretFilter` rewrites the value of every secret-looking query parameter
(``api_key``, ``key``, ``token``, ``access_token``, ``password``, ``secret``, …) to
``[redacted]`` before the record is formatted. :func:`scrub_access_log` installs it on
``uvicorn.access`` (idempotent; ``create_app`` calls it, so every worker has it).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

REDACTED = "[redacted]"
#: Query parameter names (lower case, ``-`` read as ``_``) whose values are secrets…
SECRET_NAMES = frozenset({"auth", "authorization", "code", "sig", "signature", "session"})
#: …and any name containing one of these.
SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "credential")

# One `name=value` pair after `?`, `&` or `;`.
_PAIR = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s]*)=(?P<value>[^&;#\s\"]*)")


def is_secret_name(raw_name: str) -> bool:
    name = unquote_plus(raw_name).strip().lower().replace("-", "_")
    return name in SECRET_NAMES or any(word in name for word in SECRET_WORDS)


def scrub_url(text: str) -> str:
    """``text`` with the value of every secret-looking query parameter replaced."""
    if "=" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if not is_secret_name(match["name"]):
            return match[0]
        return f"{match['lead']}{match['name']}={REDACTED}"

    return _PAIR.sub(replace, text)


class QuerySecretFilter(logging.Filter):
    """Scrubs query-string secrets from a record's message and string arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = scrub_url(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(scrub_url(a) if isinstance(a, str) else a for a in record.args)
        return True


_FILTER = QuerySecretFilter()


def scrub_access_log(logger_name: str = "uvicorn.access") -> None:
    logging.getLogger(logger_name).addFilter(_FILTER)  # adding the same filter twice is a no-op
