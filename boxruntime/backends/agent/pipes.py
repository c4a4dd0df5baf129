"""A process's stdio, held by the daemon itself (handed over by the agent): pipes, or the master
side of the terminal a command runs on.

Reading is pushed, not pulled: each descriptor's data goes to a callback from the event loop's
own reader (a pipe protocol, or the poller for a terminal), so no task reads them. The owner
pauses and resumes reading for flow control.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import termios
from collections.abc import Callable

from boxruntime.backends.agent.fd_passing import HandedPipes

READ_SIZE = 65536
# data (stream, bytes), or the end of one stream (stream, b"") for good
OnData = Callable[[int, bytes], None]


class _PipeReader(asyncio.Protocol):
    def __init__(self, stream: int, on_data: OnData) -> None:
        self._stream = stream
        self._on_data = on_data

    def data_received(self, data: bytes) -> None:
        if data:
            self._on_data(self._stream, data)

    def eof_received(self) -> bool:
        self._on_data(self._stream, b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # eof_received came first, or the owner closed it


class Terminal:
    """A terminal's master side, read and written straight through the event loop's poller.

    Pipe transports are for pipes: uvloop's write transport also reads its descriptor, and would
    take the terminal's output; and the master says EIO, not EOF, once the terminal's last user
    is gone.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, on_data: OnData) -> None:
        self._loop = loop
        self.fd = fd
        self._on_data = on_data
        self._reading = False
        os.set_blocking(fd, False)
        self.resume()

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.pause()
        self._on_data(1, data)

    def pause(self) -> None:
        if self._reading and self.fd >= 0:
            self._loop.remove_reader(self.fd)
        self._reading = False

    def resume(self) -> None:
        if not self._reading and self.fd >= 0:
            self._loop.add_reader(self.fd, self._readable)
            self._reading = True

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                writable = self._loop.create_future()
                self._loop.add_writer(self.fd, writable.set_result, None)
                try:
                    await writable
                finally:
                    self._loop.remove_writer(self.fd)

    def set_window(self, rows: int, cols: int) -> None:
        termios.tcsetwinsize(self.fd, (rows, cols))

    def close(self) -> None:
        if self.fd >= 0:
            self.pause()
            os.close(self.fd)
            self.fd = -1


class ProcessPipes:
    """The handed pipes, read into ``on_data``; stdin (a pipe, or the terminal) written here."""

    def __init__(self) -> None:
        self.stdin: asyncio.StreamWriter | None = None
        self.terminal: Terminal | None = None
        self._readers: list[asyncio.ReadTransport] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._extra_fds: list[int] = []

    @classmethod
    async def open(cls, handed: HandedPipes, on_data: OnData) -> ProcessPipes:
        loop = asyncio.get_running_loop()
        pipes = cls()
        try:
            outputs: tuple[tuple[int, int], ...] = ((1, handed.stdout), (2, handed.stderr))
            if os.isatty(handed.stdout):
                # A command on a terminal: stdout is its master side, stdin the same terminal again.
                pipes.terminal = Terminal(loop, handed.stdout, on_data)
                outputs = ((2, handed.stderr),)
                if handed.stdin is not None:
                    pipes._extra_fds.append(handed.stdin)
            for stream, fd in outputs:
                reader = functools.partial(_PipeReader, stream, on_data)
                transport, _ = await loop.connect_read_pipe(reader, os.fdopen(fd, "rb", buffering=0))
                pipes._readers.append(transport)
                pipes._transports.append(transport)
            if handed.stdin is not None and pipes.terminal is None:
                write_transport, flow = await loop.connect_write_pipe(
                    asyncio.streams.FlowControlMixin, os.fdopen(handed.stdin, "wb", buffering=0)
                )
                pipes._transports.append(write_transport)
                pipes.stdin = asyncio.StreamWriter(write_transport, flow, None, loop)
        except BaseException:
            pipes.close()
            raise
        return pipes

    @property
    def has_stdin(self) -> bool:
        return self.stdin is not None or self.terminal is not None

    def pause_reading(self) -> None:
        for transport in self._readers:
            with contextlib.suppress(RuntimeError):
                transport.pause_reading()
        if self.terminal is not None:
            self.terminal.pause()

    def resume_reading(self) -> None:
        for transport in self._readers:
            with contextlib.suppress(RuntimeError):
                transport.resume_reading()
        if self.terminal is not None:
            self.terminal.resume()

    async def write(self, data: bytes) -> None:
        if self.terminal is not None:
            await self.terminal.write(data)
            return
        if self.stdin is None or self.stdin.is_closing():
            raise BrokenPipeError("stdin is closed")
        self.stdin.write(data)
        await self.stdin.drain()

    def set_window(self, rows: int, cols: int) -> None:
        """Resize the terminal the process runs on."""
        if self.terminal is None:
            raise BrokenPipeError("no terminal")
        self.terminal.set_window(rows, cols)

    def close_stdin(self) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.close()

    def close(self) -> None:
        for transport in self._transports:
            with contextlib.suppress(Exception):
                transport.close()
        self._transports.clear()
        self._readers.clear()
        if self.terminal is not None:
            self.terminal.close()
        for fd in self._extra_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._extra_fds.clear()
