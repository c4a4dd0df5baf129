"""Connections: the thin I/O shell around the sans-I/O framings.

A connection receives parsed JSON objects (``None`` once the peer is gone) and sends encoded
message text. Sends are serialised so the lines of one chunked stdio message never interleave
with another message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from boxruntime.errors import ConnectionClosedError
from boxruntime.protocol.envelope import MAX_MESSAGE_BYTES
from boxruntime.protocol.stdio_framing import StdioDecoder, encode_lines
from boxruntime.protocol.ws_framing import MessageJoiner

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024


class Connection(Protocol):
    async def receive(self) -> dict[str, Any] | None: ...

    async def send(self, text: str) -> None: ...

    async def close(self) -> None: ...


class StreamConnection:
    """Action RPC over a byte stream pair (stdin/stdout, or a child's pipes)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = StdioDecoder()
        self._pending: list[dict[str, Any]] = []
        self._send_lock = asyncio.Lock()
        self._closed = False

    async def receive(self) -> dict[str, Any] | None:
        while not self._pending:
            try:
                data = await self._reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    async def send(self, text: str) -> None:
        lines = encode_lines(text)
        async with self._send_lock:
            if self._closed or self._writer.is_closing():
                raise ConnectionClosedError("stdio connection is closed")
            try:
                # One write for the whole message: chunk lines stay contiguous and in order.
                self._writer.write(b"".join(lines))
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise ConnectionClosedError(f"stdio connection closed during send: {exc}") from exc

    async def close(self) -> None:
        self._closed = True
        if not self._writer.is_closing():
            self._writer.close()


class _AiohttpWebSocket(Protocol):
    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...

    async def send_str(self, data: str, compress: int | None = None) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...

    @property
    def closed(self) -> bool: ...


class WebSocketConnection:
    """Action RPC over an aiohttp WebSocket, server or client side.

    aiohttp reassembles fragmented messages itself; ``MessageJoiner`` additionally joins
    LangBot 0.5's separate 64 KiB slices. Outbound messages are always sent whole.
    """

    def __init__(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        # Imported here: a client that dials with ws_client never loads aiohttp at all.
        from aiohttp import WSMsgType

        self._types = WSMsgType
        self._ws: _AiohttpWebSocket = ws
        self._joiner = MessageJoiner()
        self._pending: list[dict[str, Any]] = []
        self._send_lock = asyncio.Lock()

    async def receive(self) -> dict[str, Any] | None:
        while not self._pending:
            msg = await self._ws.receive()
            if msg.type == self._types.TEXT:
                self._pending.extend(self._joiner.feed(msg.data))
            elif msg.type == self._types.BINARY:
                log.warning("websocket: ignored a binary message of %d bytes", len(msg.data))
            elif msg.type in (self._types.PING, self._types.PONG):
                continue
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                return None
        return self._pending.pop(0)

    async def send(self, text: str) -> None:
        if len(text) > MAX_MESSAGE_BYTES:  # ASCII: characters are bytes
            raise ValueError(f"message of {len(text)} bytes exceeds {MAX_MESSAGE_BYTES} bytes")
        async with self._send_lock:
            if self._ws.closed:
                raise ConnectionClosedError("websocket is closed")
            try:
                await self._ws.send_str(text)
            except (ConnectionError, RuntimeError) as exc:
                raise ConnectionClosedError(f"websocket closed during send: {exc}") from exc

    async def close(self) -> None:
        await self._ws.close()
