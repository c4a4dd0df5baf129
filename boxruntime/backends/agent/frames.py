"""The daemon's end of the agent connection: frames parsed as the bytes arrive.

Each frame is handed over from ``data_received`` itself, so an exec's result reaches the
waiting caller one event-loop iteration sooner than through a reader task. Writing keeps
asyncio's ``StreamWriter`` (and its ``drain``), which this protocol supports by extending
``StreamReaderProtocol``; its reader is never fed.

The agent runs inside the sandbox: an oversized or malformed frame ends the connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from boxruntime.backends.agent.fd_passing import HEADER, MAX_BODY, MAX_HEADER

Frame = tuple[dict[str, Any], bytes]


class FrameProtocol(asyncio.StreamReaderProtocol):
    """The first frame resolves ``hello``; every later one goes to ``on_frame``. ``on_end`` is
    called once, with this protocol and the reason, when the connection ends or breaks the
    protocol."""

    def __init__(
        self,
        on_frame: Callable[[dict[str, Any], bytes], None],
        on_end: Callable[[FrameProtocol, str], None],
    ) -> None:
        super().__init__(asyncio.StreamReader())
        self.hello: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._on_frame = on_frame
        self._on_end = on_end
        self._buffer = bytearray()
        self._ended = False
        self._connection: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connection = transport

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        self._buffer += data
        try:
            while (frame := self._next_frame()) is not None:
                if not self.hello.done():
                    self.hello.set_result(frame)
                else:
                    self._on_frame(*frame)
        except (ValueError, KeyError, TypeError) as exc:
            self._end(f"protocol error: {exc}")
            if self._connection is not None:
                self._connection.close()

    def _next_frame(self) -> Frame | None:
        if len(self._buffer) < HEADER.size:
            return None
        hlen, blen = HEADER.unpack_from(self._buffer)
        if hlen > MAX_HEADER or blen > MAX_BODY:
            raise ValueError(f"agent frame too large ({hlen}+{blen} bytes)")
        end = HEADER.size + hlen + blen
        if len(self._buffer) < end:
            return None
        header = json.loads(self._buffer[HEADER.size : HEADER.size + hlen])
        if not isinstance(header, dict):
            raise ValueError("agent frame header is not an object")
        body = bytes(self._buffer[HEADER.size + hlen : end])
        del self._buffer[:end]
        return header, body

    def eof_received(self) -> bool:
        self._end("closed by the agent")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._end(f"lost: {exc}" if exc else "closed")

    def _end(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(reason))
            self.hello.exception()  # retrieved here: whoever waits sees it, nobody else warns
        self._on_end(self, reason)
