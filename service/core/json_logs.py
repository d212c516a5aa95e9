"""``VOICESEARCH_LOG_FORMAT=json``: one JSON object per log line, for log collectors.

Every line has ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message`` and
``pid`` (the worker process); a line written while serving a request adds its ``request_id``
(``service.core.request_context``); fields a caller passes with ``extra={...}`` are kept as
fields (the request log's ``method``, ``route``, ``status``, ``duration_ms``…); a traceback goes
in ``exception``. The message is the same text the plain format shows, so filters that rewrite
records (the access-log scrubbing) apply to both formats alike.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from service.core.request_context import current_request_id

# The attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName", "color_message"}  # uvicorn's coloured copy
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker of `serve --workers N`
        }
        # A record may carry its request's id (the request log does: it can be formatted
        # later, elsewhere); else the request this line is written for, if any.
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
