"""Stdio framing: newline-delimited JSON with chunking beyond 16 KiB (reference §A.3).

Sans-I/O: ``encode_lines`` turns one message into the lines to write; ``StdioDecoder`` is fed
raw bytes and hands back the JSON objects it completed. Anything that is not a JSON object on
one line is dropped (LangBot's rule, which makes stray prints on stdout harmless), and a broken
chunk sequence is dropped as a whole; nothing the peer sends can raise out of ``feed``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from boxruntime.protocol.envelope import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 * 1024
MAX_CHUNKS = 4096
# A chunk line carries at most 16 KiB of payload; JSON escaping can grow that several times
# (a control byte becomes \u00XX). Unchunked lines from lenient peers may be as large as a
# whole message. Beyond this a line is junk and is discarded without being buffered.
MAX_LINE_BYTES = MAX_MESSAGE_BYTES + 64 * 1024
_CHUNK_TYPES = ("chunk_start", "chunk_data", "chunk_end")


def _split_utf8(data: bytes, limit: int) -> list[bytes]:
    """Split into pieces of at most ``limit`` bytes, never inside a UTF-8 code point."""
    pieces: list[bytes] = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        # Step back over continuation bytes (10xxxxxx) so the piece ends on a boundary.
        while end < len(data) and end > start and (data[end] & 0xC0) == 0x80:
            end -= 1
        if end == start:  # only reachable with limit < 4; keep going rather than loop
            end = min(start + limit, len(data))
        pieces.append(data[start:end])
        start = end
    return pieces


def encode_lines(message: str) -> list[bytes]:
    """The lines (each ending in ``\\n``) that carry ``message`` over stdio."""
    raw = message.encode("utf-8")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(raw)} bytes exceeds the {MAX_MESSAGE_BYTES} byte limit")
    if len(raw) <= CHUNK_BYTES:
        return [raw + b"\n"]
    lines = [json.dumps({"type": "chunk_start", "total_size": len(raw)}).encode() + b"\n"]
    offset = 0
    for piece in _split_utf8(raw, CHUNK_BYTES):
        chunk = {"type": "chunk_data", "data": piece.decode("utf-8"), "offset": offset}
        lines.append(json.dumps(chunk).encode() + b"\n")
        offset += len(piece)
    lines.append(json.dumps({"type": "chunk_end"}).encode() + b"\n")
    return lines


class _ChunkAssembly:
    def __init__(self, total_size: int) -> None:
        self.total_size = total_size
        self.parts: list[bytes] = []
        self.received = 0

    def add(self, piece: str, offset: Any) -> bool:
        data = piece.encode("utf-8")
        if offset != self.received or len(self.parts) >= MAX_CHUNKS:
            return False
        if self.received + len(data) > self.total_size:
            return False
        self.parts.append(data)
        self.received += len(data)
        return True


class StdioDecoder:
    """Incremental decoder: ``feed(bytes) -> [json objects]``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line, skipping to its newline
        self._assembly: _ChunkAssembly | None = None
        self.dropped = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                self._buffer_partial(data[start:])
                return out
            segment = data[start:newline]
            start = newline + 1
            if self._discarding:
                self._discarding = False
                self._buffer.clear()
                continue
            if self._buffer:
                self._buffer += segment
                line = bytes(self._buffer)
                self._buffer.clear()
            else:
                line = segment
            obj = self._line(line)
            if obj is not None:
                out.append(obj)

    def _buffer_partial(self, tail: bytes) -> None:
        if self._discarding or not tail:
            return
        if len(self._buffer) + len(tail) > MAX_LINE_BYTES:
            self._buffer.clear()
            self._discarding = True
            self._drop("over-long line")
            return
        self._buffer += tail

    def _drop(self, why: str) -> None:
        self.dropped += 1
        log.debug("stdio framing: dropped %s", why)

    def _line(self, line: bytes) -> dict[str, Any] | None:
        line = line.strip()
        if not line:
            return None
        if not (line.startswith(b"{") and line.endswith(b"}")):
            self._drop("non-JSON line")
            return None
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            self._drop("invalid JSON line")
            return None
        if not isinstance(obj, dict):
            self._drop("JSON line that is not an object")
            return None
        kind = obj.get("type")
        if kind in _CHUNK_TYPES:
            return self._chunk(kind, obj)
        if self._assembly is not None:
            # LangBot drops ordinary lines that arrive inside a chunk sequence; so do we.
            self._drop("message inside a chunk sequence")
            return None
        return obj

    def _chunk(self, kind: str, obj: dict[str, Any]) -> dict[str, Any] | None:
        if kind == "chunk_start":
            if self._assembly is not None:
                self._drop("unfinished chunk sequence")
            total = obj.get("total_size")
            if not isinstance(total, int) or isinstance(total, bool):
                self._assembly = None
                self._drop("chunk_start without a size")
                return None
            if not 0 <= total <= MAX_MESSAGE_BYTES:
                self._assembly = None
                self._drop(f"chunk_start of {total} bytes")
                return None
            self._assembly = _ChunkAssembly(total)
            return None
        assembly = self._assembly
        if assembly is None:
            self._drop(f"{kind} outside a chunk sequence")
            return None
        if kind == "chunk_data":
            piece = obj.get("data")
            if not isinstance(piece, str) or not assembly.add(piece, obj.get("offset")):
                self._assembly = None
                self._drop("inconsistent chunk_data")
            return None
        self._assembly = None
        if assembly.received != assembly.total_size:
            self._drop("chunk sequence shorter than announced")
            return None
        try:
            message = json.loads(b"".join(assembly.parts))
        except (ValueError, RecursionError):
            self._drop("chunked message that is not JSON")
            return None
        if not isinstance(message, dict):
            self._drop("chunked message that is not an object")
            return None
        return message
