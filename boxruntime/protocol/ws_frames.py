"""The client side of RFC 6455 WebSocket framing, sans-I/O: the opening handshake, frames out
(masked, as a client must), frames in (reassembled into messages), and nothing else.

The bridge dials the daemon with this (``ws_client``) instead of aiohttp: aiohttp's client
costs more start-up time than a one-shot ``boxruntime exec`` may spend in all (it builds TLS
contexts at import). Only what an action-RPC client needs is here: text messages, fragments,
ping/pong, close; no extensions (the daemon offers none unasked), no subprotocols.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CONTROL_MAX = 125
CLOSE_NORMAL = 1000


class WebSocketError(Exception):
    """The peer broke the WebSocket protocol, or refused the upgrade; the message says how."""


class HandshakeRefused(WebSocketError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status
        self.reason = reason


def handshake_request(host: str, path: str, headers: dict[str, str]) -> tuple[bytes, str]:
    """The upgrade request for ``host`` and ``path``, and the key its answer must match."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), key


def check_handshake(head: bytes, key: str) -> None:
    """Raise unless ``head`` (status line and headers) accepts the upgrade for ``key``."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise WebSocketError(f"not an HTTP answer: {status_line[:80]!r}")
    status = int(parts[1])
    if status != 101:
        raise HandshakeRefused(status, parts[2] if len(parts) > 2 else "")
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")
    if headers.get("upgrade", "").lower() != "websocket" or headers.get("sec-websocket-accept") != accept:
        raise WebSocketError("the server's upgrade answer does not accept this WebSocket key")


def _mask(payload: bytes, key: bytes) -> bytes:
    # One big-integer XOR instead of a Python loop over every byte of a 16 MiB message.
    if not payload:
        return payload
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return masked.to_bytes(len(payload), "big")


def encode_frame(opcode: int, payload: bytes, *, mask: bool = True) -> bytes:
    """One final frame; a client masks every frame it sends."""
    length = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 1 << 16:
        head += bytes([bit | 126]) + struct.pack(">H", length)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _mask(payload, key)


def close_payload(code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
    return struct.pack(">H", code) + reason.encode("utf-8")[: CONTROL_MAX - 2]


@dataclass(frozen=True, slots=True)
class Message:
    """A whole message (fragments joined), or a control frame."""

    opcode: int
    data: bytes


class FrameDecoder:
    """``feed(bytes) -> [Message]``: frames reassembled into messages, controls as they come.

    Messages larger than ``max_size`` are a protocol error (the daemon's limit is 16 MiB)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while (frame := self._next_frame()) is not None:
            fin, opcode, payload = frame
            message = self._assemble(fin, opcode, payload)
            if message is not None:
                messages.append(message)
        return messages

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        fin, rsv, opcode = bool(buffer[0] & 0x80), buffer[0] & 0x70, buffer[0] & 0x0F
        masked, length, offset = bool(buffer[1] & 0x80), buffer[1] & 0x7F, 2
        if rsv:
            raise WebSocketError("a frame uses an extension bit that was not negotiated")
        if length == 126:
            if len(buffer) < 4:
                return None
            (length,) = struct.unpack_from(">H", buffer, 2)
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            (length,) = struct.unpack_from(">Q", buffer, 2)
            offset = 10
        if opcode >= OP_CLOSE and (length > CONTROL_MAX or not fin):
            raise WebSocketError("a control frame is fragmented or longer than 125 bytes")
        if length > self.max_size:
            raise WebSocketError(f"a frame of {length} bytes exceeds the limit of {self.max_size}")
        key = b""
        if masked:
            if len(buffer) < offset + 4:
                return None
            key = bytes(buffer[offset : offset + 4])
            offset += 4
        if len(buffer) < offset + length:
            return None
        payload = bytes(buffer[offset : offset + length])
        del buffer[: offset + length]
        return fin, opcode, _mask(payload, key) if masked else payload

    def _assemble(self, fin: bool, opcode: int, payload: bytes) -> Message | None:
        if opcode >= OP_CLOSE:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise WebSocketError(f"unknown control opcode {opcode:#x}")
            return Message(opcode, payload)
        if opcode == OP_CONTINUATION:
            if self._fragment_opcode is None:
                raise WebSocketError("a continuation frame without a message to continue")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragment_opcode is not None:
                raise WebSocketError("a new message began before the previous one ended")
            self._fragment_opcode = opcode
        else:
            raise WebSocketError(f"unknown data opcode {opcode:#x}")
        self._fragment_size += len(payload)
        if self._fragment_size > self.max_size:
            raise WebSocketError(f"a message exceeds the limit of {self.max_size} bytes")
        self._fragments.append(payload)
        if not fin:
            return None
        message = Message(self._fragment_opcode, b"".join(self._fragments))
        self._fragments, self._fragment_opcode, self._fragment_size = [], None, 0
        return message
