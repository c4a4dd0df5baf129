"""WebSocket message rules (reference §A.4).

One text message is one protocol message, up to 16 MiB; the transport reassembles fragmented
messages. LangBot 0.5's client instead splits anything over 64 KiB into *separate* text
messages of 64 KiB each and expects the receiver to join them until the text parses; its own
daemon never did, so such requests were lost. ``MessageJoiner`` does the joining.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from boxruntime.protocol.envelope import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

# LangBot 0.5 cuts a large message into slices of exactly this many bytes; only the last slice
# of a split is shorter, so a slice of this size is never a message of its own.
LANGBOT_05_SLICE_BYTES = 64 * 1024


def _parse_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


class MessageJoiner:
    """Sans-I/O: ``feed(text) -> [json objects]`` for one WebSocket connection."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._parts: list[str] = []
        self._size = 0
        self._max_bytes = max_bytes
        self.dropped = 0

    def feed(self, text: str) -> list[dict[str, Any]]:
        if not self._parts:
            obj = _parse_object(text)
            if obj is not None:
                return [obj]
            if text.lstrip().startswith("{"):
                self._start(text)
            else:
                self._drop("text message that is not a JSON object")
            return []
        return self._continue(text)

    def _start(self, text: str) -> None:
        self._parts = [text]
        self._size = len(text.encode("utf-8"))

    def _continue(self, text: str) -> list[dict[str, Any]]:
        size = len(text.encode("utf-8"))
        self._parts.append(text)
        self._size += size
        # A JSON object always ends with "}", so only then is a parse attempt worth its cost;
        # this keeps joining 256 slices of a 16 MiB message linear, not quadratic.
        if text.rstrip().endswith("}"):
            joined = "".join(self._parts)
            obj = _parse_object(joined)
            if obj is not None:
                self._reset()
                return [obj]
        if self._size > self._max_bytes:
            self._reset()
            self._drop(f"split message over {self._max_bytes} bytes")
            return []
        # A short slice that is a whole message on its own means the buffered text was junk.
        could_stand_alone = size != LANGBOT_05_SLICE_BYTES and text.lstrip().startswith("{")
        alone = _parse_object(text) if could_stand_alone else None
        if alone is not None:
            self._reset()
            self._drop("unfinished split message")
            return [alone]
        return []

    def _reset(self) -> None:
        self._parts = []
        self._size = 0

    def _drop(self, why: str) -> None:
        self.dropped += 1
        log.warning("websocket framing: dropped %s", why)
