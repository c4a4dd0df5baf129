"""The daemon's log output: one line per event, as text or as JSON objects.

- ``text`` (default): ``[time] LEVEL logger: message``, for a terminal or ``journalctl``.
- ``json``: one JSON object per line (``ts``, ``level``, ``logger``, ``message``, and the
  fields a line carries: a failed request's ``action``, ``session``, ``error``, ``duration_ms``;
  ``exc`` with a traceback), for a log shipper.

aiohttp's access log (one line per HTTP request, WebSocket upgrades included) is off unless
asked for: a client that reconnects would otherwise fill the log with lines that say nothing
a connection line does not. Failed actions are logged once each by ``boxruntime.requests``
(``boxruntime.protocol.request_log``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "aiohttp.access"
# What logging.LogRecord has of its own; anything else on a record came with ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup(level: str = "info", log_format: LogFormat = "text", access_log: bool = False) -> None:
    """Configure the root logger on stderr (stdout may carry the protocol, in stdio mode)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET if access_log else logging.WARNING)
