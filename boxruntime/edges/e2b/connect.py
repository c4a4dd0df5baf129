"""Connect-RPC over HTTP/1.1 with the JSON codec, as E2B's envd speaks it (server side).

- Unary: ``POST /<service>/<method>``, ``application/json`` in and out; an error is an HTTP
  status with ``{"code": "<name>", "message": ...}``.
- Streams: bodies are envelopes, a flags byte and a big-endian length before each JSON
  message; a server stream ends with an end-stream envelope (flag 0x02) that carries the error,
  if any. Errors of a stream therefore travel with HTTP 200.
- ``Connect-Timeout-Ms`` is the call's deadline.

The framing is pure (``envelope``, ``EnvelopeReader``); ``ServerStream`` is the thin aiohttp
shell around it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

ENVELOPE = struct.Struct(">BI")
FLAG_END_STREAM = 0x02
FLAG_COMPRESSED = 0x01
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
STREAM_CONTENT_TYPE = "application/connect+json"
UNARY_CONTENT_TYPE = "application/json"
# Connect's codes and the HTTP status each one is sent with (connectrpc's own table).
HTTP_STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


class ConnectError(Exception):
    """An RPC error with its Connect code (a key of HTTP_STATUS)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        assert code in HTTP_STATUS, code
        self.code = code
        self.message = message

    def wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return ENVELOPE.pack(flags, len(data)) + data


def end_stream(error: ConnectError | None = None) -> bytes:
    return envelope({"error": error.wire()} if error is not None else {}, FLAG_END_STREAM)


class EnvelopeReader:
    """Messages out of a byte stream of envelopes (a client stream), as the bytes arrive."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, dict[str, Any]]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= ENVELOPE.size:
            flags, length = ENVELOPE.unpack_from(self._buffer)
            if length > MAX_MESSAGE_BYTES:
                raise ConnectError("resource_exhausted", f"message of {length} bytes is over the limit")
            if flags & FLAG_COMPRESSED:
                raise ConnectError("internal", "compressed messages are not accepted (compression is off)")
            if len(self._buffer) < ENVELOPE.size + length:
                break
            raw = bytes(self._buffer[ENVELOPE.size : ENVELOPE.size + length])
            del self._buffer[: ENVELOPE.size + length]
            messages.append((flags, parse_json(raw)))
        return messages

    @property
    def leftover(self) -> int:
        return len(self._buffer)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise ConnectError("invalid_argument", f"request is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConnectError("invalid_argument", "request is not a JSON object")
    return value


def timeout_sec(request: web.Request) -> float | None:
    """The call's deadline from ``Connect-Timeout-Ms``, in seconds (None: none given)."""
    raw = request.headers.get("Connect-Timeout-Ms")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 10:
        raise ConnectError("invalid_argument", f"invalid Connect-Timeout-Ms: {raw!r}")
    return int(raw) / 1000


def unary_response(message: dict[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(message, separators=(",", ":")).encode(), content_type=UNARY_CONTENT_TYPE)


def unary_error(error: ConnectError) -> web.Response:
    return web.Response(
        status=HTTP_STATUS[error.code],
        body=json.dumps(error.wire()).encode(),
        content_type=UNARY_CONTENT_TYPE,
    )


async def read_unary(request: web.Request) -> dict[str, Any]:
    return parse_json(await request.read())


async def read_single_envelope(request: web.Request) -> dict[str, Any]:
    """The one request message of a server-streaming call."""
    reader = EnvelopeReader()
    messages = reader.feed(await request.read())
    if len(messages) != 1 or reader.leftover:
        raise ConnectError("invalid_argument", "a server-streaming call takes exactly one enveloped message")
    return messages[0][1]


async def client_messages(request: web.Request) -> AsyncIterator[dict[str, Any]]:
    """The request messages of a client-streaming call, as they arrive."""
    reader = EnvelopeReader()
    async for chunk in request.content.iter_any():
        for flags, message in reader.feed(chunk):
            if flags & FLAG_END_STREAM:
                return
            yield message
    if reader.leftover:
        raise ConnectError("invalid_argument", "the request stream ended inside a message")


class ServerStream:
    """The response side of a server stream: 200 with envelopes, then the end-stream one."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.response = web.StreamResponse(headers={"Content-Type": STREAM_CONTENT_TYPE})
        self.response.enable_chunked_encoding()
        self.ended = False
        self.held = bytearray()  # envelopes that go out with the next write

    async def open(self) -> None:
        await self.response.prepare(self._request)

    def hold(self, message: dict[str, Any]) -> None:
        self.held += envelope(message)

    async def write(self, data: bytes = b"") -> None:
        """Held envelopes and ``data`` (envelopes), in one write."""
        if self.held:
            data, self.held = bytes(self.held + data), bytearray()
        if data:
            await self.response.write(data)

    async def send(self, message: dict[str, Any]) -> None:
        await self.write(envelope(message))

    async def end(self, error: ConnectError | None = None, before: bytes = b"") -> None:
        """The end-stream envelope (after what is held and ``before``), in one write with the
        end of the body."""
        if not self.ended:
            self.ended = True
            data, self.held = bytes(self.held + before), bytearray()
            await self.response.write_eof(data + end_stream(error))

    def abort(self) -> None:
        """Break the connection without an end: what a client sees when the sandbox dies."""
        self.ended = True
        transport = self._request.transport
        if transport is not None:
            transport.abort()
