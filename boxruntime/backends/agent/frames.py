"""The daemon's end of the agent's frames: the one place the host side reads them.

Both readers below drive the wire module's one decoder (``boxagent_wire.Decoder``, which the
agent uses too):

- ``FrameProtocol``, the agent connection itself: each frame is handed over from
  ``data_received``, so an exec's result reaches the waiting caller one event-loop iteration
  sooner than through a reader task. Writing keeps asyncio's ``StreamWriter`` (and its
  ``drain``), which this protocol supports by extending ``StreamReaderProtocol``; its reader is
  never fed.
- ``read_frame_blocking``, for the short blocking connection that receives file descriptors
  (fd_passing): it reads exactly one frame, never a byte past it.

The agent runs inside the sandbox: an oversized or malformed frame ends the connection.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from boxruntime.backends.agent.sandbox import boxagent_wire as wire

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
        self._frames = wire.Decoder()
        self._ended = False
        self._connection: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connection = transport

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        self._frames.feed(data)
        try:
            while (frame := self._frames.next_frame()) is not None:
                if not self.hello.done():
                    self.hello.set_result(frame)
                else:
                    self._on_frame(*frame)
        except (ValueError, KeyError, TypeError) as exc:  # wire.FrameError is a ValueError
            self._end(f"protocol error: {exc}")
            if self._connection is not None:
                self._connection.close()

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


def read_frame_blocking(sock: socket.socket, frames: wire.Decoder) -> Frame:
    """The next frame from a blocking socket, reading no byte past it (what ``frames`` holds
    already counts). ValueError if the agent ends the connection first or breaks the protocol."""
    while (frame := frames.next_frame()) is None:
        chunk = sock.recv(frames.missing())
        if not chunk:
            raise ValueError("agent closed the connection mid-frame")
        frames.feed(chunk)
    return frame
