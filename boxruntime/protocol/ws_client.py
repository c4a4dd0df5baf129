"""A WebSocket this process dials, as an action-RPC ``Connection``: asyncio streams around the
sans-I/O framing of ``ws_frames``.

What the bridge uses to reach a daemon at ``ws://`` or ``wss://`` (TLS with the system's CA
store). Messages are joined as ``WebSocketConnection`` joins them (``MessageJoiner``: LangBot
0.5's 64 KiB slices too), pings are answered, and a close is echoed before the connection
reports its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import urllib.parse
from typing import Any

from boxruntime.errors import ConnectionClosedError
from boxruntime.protocol.envelope import MAX_MESSAGE_BYTES
from boxruntime.protocol.ws_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameDecoder,
    WebSocketError,
    check_handshake,
    close_payload,
    encode_frame,
    handshake_request,
)
from boxruntime.protocol.ws_framing import MessageJoiner

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
HEAD_LIMIT = 64 * 1024  # the server's upgrade answer: status line and headers
CLOSE_WAIT_SEC = 2.0


class ClientWebSocket:
    """Action RPC over a WebSocket opened by ``dial``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_size: int) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(max_size)
        self._joiner = MessageJoiner(max_size)
        self._pending: list[dict[str, Any]] = []
        self._send_lock = asyncio.Lock()
        self._close_sent = False
        self.close_code: int | None = None  # the code of the peer's close frame, once received

    @property
    def closed(self) -> bool:
        """A close was sent or received, or the stream ended."""
        return self._close_sent or self._writer.is_closing()

    async def receive(self) -> dict[str, Any] | None:
        """The next protocol message; None once the peer has gone (a close, or the stream's end)."""
        while not self._pending:
            try:
                data = await self._reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                return None
            try:
                messages = self._decoder.feed(data)
            except WebSocketError as exc:
                log.warning("websocket: %s; closing", exc)
                await self._send_close(1002)
                return None
            for message in messages:
                if message.opcode == OP_TEXT:
                    self._pending.extend(self._joiner.feed(message.data.decode("utf-8", "replace")))
                elif message.opcode == OP_BINARY:
                    log.warning("websocket: ignored a binary message of %d bytes", len(message.data))
                elif message.opcode == OP_PING:
                    await self._write(encode_frame(OP_PONG, message.data))
                elif message.opcode == OP_CLOSE:
                    self.close_code = struct.unpack(">H", message.data[:2])[0] if len(message.data) >= 2 else 1005
                    await self._send_close(self.close_code if self.close_code != 1005 else 1000)
                    return None
        return self._pending.pop(0)

    async def send(self, text: str) -> None:
        """Send one protocol message, whole."""
        if len(text) > MAX_MESSAGE_BYTES:  # ASCII: characters are bytes
            raise ValueError(f"message of {len(text)} bytes exceeds {MAX_MESSAGE_BYTES} bytes")
        if self.closed:
            raise ConnectionClosedError("websocket is closed")
        await self._write(encode_frame(OP_TEXT, text.encode("utf-8")))

    async def close(self) -> None:
        """Send a close frame and end the stream (the peer's echo is not waited for)."""
        await self._send_close(1000)
        self._writer.close()
        with contextlib.suppress(Exception):  # already gone, or slow to go: either way it is closed
            await asyncio.wait_for(self._writer.wait_closed(), CLOSE_WAIT_SEC)

    async def _send_close(self, code: int) -> None:
        if self._close_sent:
            return
        with contextlib.suppress(ConnectionClosedError):
            await self._write(encode_frame(OP_CLOSE, close_payload(code)))
        self._close_sent = True

    async def _write(self, frame: bytes) -> None:
        async with self._send_lock:
            if self._writer.is_closing():
                raise ConnectionClosedError("websocket is closed")
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise ConnectionClosedError(f"websocket closed during send: {exc}") from exc


async def dial(url: str, headers: dict[str, str], max_size: int = MAX_MESSAGE_BYTES) -> ClientWebSocket:
    """Open ``ws://`` or ``wss://`` ``url`` with extra upgrade ``headers``.

    OSError when the server cannot be reached; ``HandshakeRefused`` (with its HTTP status) when
    it refuses the upgrade; ``WebSocketError`` when it answers something else."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise WebSocketError(f"{url!r} is not a ws:// or wss:// URL")
    port = parts.port or (443 if secure else 80)
    context = None
    if secure:
        import ssl  # only a wss:// endpoint pays for loading the TLS stack

        context = ssl.create_default_context()
    reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=context, limit=HEAD_LIMIT)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request, key = handshake_request(parts.netloc, path, headers)
        writer.write(request)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise WebSocketError("the server's upgrade answer is too long") from None
        except asyncio.IncompleteReadError:
            raise WebSocketError("the server closed the connection during the upgrade") from None
        check_handshake(head[:-4], key)
    except BaseException:
        writer.close()
        raise
    return ClientWebSocket(reader, writer, max_size)
