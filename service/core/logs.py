"""How every voicesearch process logs: one format, one level, quiet third parties.

One logging configuration (:func:`logging_config`, a :func:`logging.config.dictConfig` dict) is
used by the CLI commands and handed to uvicorn as ``log_config``, which applies it in *each*
worker process. That is what makes ``serve --workers 4`` log exactly like a single process:
without it, worker processes start with only uvicorn's own loggers configured, so the service's
INFO lines vanish and its warnings reach Python's last-resort handler, with no time, level or
logger name.

Third-party libraries log routine chatter at INFO (FAISS probing CPU features, Alembic naming
its plugins, SpeechBrain listing every file it loads). They are held at WARNING unless the
operator asks for ``debug``.
"""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_FORMAT = (
    '%(asctime)s %(levelname)s %(name)s: %(client_addr)s - "%(request_line)s" %(status_code)s'
)

LEVELS = ("debug", "info", "warning", "error", "critical")

#: Loggers held at WARNING below ``debug``: their INFO lines are noise to an operator.
NOISY_LOGGERS = (
    "faiss",
    "alembic",
    "speechbrain",
    "httpx",
    "httpcore",
    "urllib3",
    "huggingface_hub",
    "filelock",
    "matplotlib",
    "PIL",
    "numexpr",
)


def level_number(level: str) -> int:
    return getattr(logging, level.upper(), logging.INFO)


def logging_config(level: str = "info") -> dict[str, Any]:
    """The dictConfig for ``level`` (one of :data:`LEVELS`)."""
    number = level_number(level)
    quiet = logging.WARNING if number > logging.DEBUG else number
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": LOG_FORMAT},
            "access": {"()": "uvicorn.logging.AccessFormatter", "fmt": ACCESS_FORMAT},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"handlers": ["default"], "level": number},
        "loggers": {
            # uvicorn's loggers go through the root handler (same format), except the access
            # log, which has its own line format.
            "uvicorn": {"level": number, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": number, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": number, "handlers": ["access"], "propagate": False},
            **{name: {"level": quiet} for name in NOISY_LOGGERS},
        },
    }


def configure(level: str = "info") -> None:
    """Apply :func:`logging_config` to this process (and to the processes it starts)."""
    # SpeechBrain sets every one of its module loggers to $SB_LOG_LEVEL (INFO when unset) as it
    # creates them, which overrides any level given to the "speechbrain" parent logger. Set in
    # the environment, it also reaches uvicorn's worker processes.
    if "SB_LOG_LEVEL" not in os.environ:
        os.environ["SB_LOG_LEVEL"] = "DEBUG" if level_number(level) <= logging.DEBUG else "WARNING"
    logging.config.dictConfig(logging_config(level))
