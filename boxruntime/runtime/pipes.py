"""A process's stdio, held by the daemon itself (handed over by the agent): pipes, or the
master side of the terminal a command runs on."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import struct
import termios
from dataclasses import dataclass, field

from boxruntime.backends.agent.fd_passing import HandedPipes

READ_SIZE = 65536


class Terminal:
    """A terminal's master side, read and written straight through the event loop's poller.

    Pipe transports are for pipes: uvloop's write transport also reads its descriptor, and
    would take the terminal's output; and the master says EIO, not EOF, once the terminal's
    last user is gone.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self.fd = fd
        self.output = asyncio.StreamReader(limit=2**20)
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.output.feed_data(data)
        else:
            self._loop.remove_reader(self.fd)
            self.output.feed_eof()

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

    def set_window(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> None:
        if self.fd >= 0:
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1


@dataclass
class ProcessPipes:
    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    _transports: list[asyncio.BaseTransport]
    terminal: Terminal | None = None
    _extra_fds: list[int] = field(default_factory=list)

    @classmethod
    async def open(cls, handed: HandedPipes) -> ProcessPipes:
        loop = asyncio.get_running_loop()
        transports: list[asyncio.BaseTransport] = []
        readers = []
        terminal = None
        if os.isatty(handed.stdout):
            # A command on a terminal: stdout is its master side, stdin the same terminal again.
            terminal = Terminal(loop, handed.stdout)
            readers.append(terminal.output)
        for fd in (handed.stderr,) if terminal is not None else (handed.stdout, handed.stderr):
            reader = asyncio.StreamReader(limit=2**20)
            protocol = functools.partial(asyncio.StreamReaderProtocol, reader)
            read_transport, _ = await loop.connect_read_pipe(protocol, os.fdopen(fd, "rb", buffering=0))
            transports.append(read_transport)
            readers.append(reader)
        writer = None
        extra = []
        if handed.stdin is not None and terminal is not None:
            extra.append(handed.stdin)  # the terminal is written through its master side
        elif handed.stdin is not None:
            write_transport, flow = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, os.fdopen(handed.stdin, "wb", buffering=0)
            )
            transports.append(write_transport)
            writer = asyncio.StreamWriter(write_transport, flow, None, loop)
        return cls(writer, readers[0], readers[1], transports, terminal, extra)

    @property
    def has_stdin(self) -> bool:
        return self.stdin is not None or self.terminal is not None

    async def write(self, data: bytes) -> None:
        if self.terminal is not None:
            await self.terminal.write(data)
            return
        if self.stdin is None or self.stdin.is_closing():
            raise BrokenPipeError("stdin is closed")
        self.stdin.write(data)
        await self.stdin.drain()

    def set_window(self, cols: int, rows: int) -> None:
        """Resize the terminal the process runs on."""
        if self.terminal is None:
            raise BrokenPipeError("no terminal")
        self.terminal.set_window(cols, rows)

    def close_stdin(self) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.close()

    def close(self) -> None:
        for transport in self._transports:
            with contextlib.suppress(Exception):
                transport.close()
        if self.terminal is not None:
            self.terminal.close()
        for fd in self._extra_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._extra_fds.clear()
