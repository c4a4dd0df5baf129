"""One log line per failed request: which action, which session, which error class, how long.

An operator reads why a client's call failed without a client-side trace. Expected failures
(typed ``BoxError``s: a bad spec, a missing session) are warnings on one line; anything else is
a bug of ours and is logged as an error with its traceback. The message is made safe first: a
validation error's text carries the values it refused (``input_value=…``), which may be a
secret from the request, so those parts are cut.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from boxruntime.errors import BoxError, wire_name

log = logging.getLogger("boxruntime.requests")

MESSAGE_CHARS = 300
# pydantic's "[type=..., input_value=..., input_type=...]" suffix, and any "input_value=" left.
_INPUT_ECHO = re.compile(r"\s*\[type=[^\]\n]*\]|,?\s*input_value=[^\n]*")


def safe_message(exc: BaseException) -> str:
    """The error's text on one line, without echoed input values, at most MESSAGE_CHARS."""
    text = _INPUT_ECHO.sub("", str(exc))
    text = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def request_failed(peer: str, action: str, data: Any, exc: BaseException, started: float) -> None:
    """Log the failure of ``action`` (its request payload ``data``), ``started`` by monotonic time."""
    session = data.get("session_id") if isinstance(data, dict) else None
    fields = {
        "action": action,
        "session": session if isinstance(session, str) else None,
        "error": wire_name(exc),
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
        "peer": peer,
    }
    where = f" session={fields['session']}" if fields["session"] else ""
    line = "%s failed:%s error=%s duration_ms=%s: %s"
    args = (action, where, fields["error"], fields["duration_ms"], safe_message(exc))
    if isinstance(exc, BoxError):
        log.warning(line, *args, extra=fields)
    else:
        log.error(line, *args, extra=fields, exc_info=exc)
