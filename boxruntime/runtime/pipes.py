"""A managed process's stdio pipes, held by the daemon itself (handed over by the agent)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from dataclasses import dataclass

from boxruntime.backends.agent.fd_passing import HandedPipes

READ_SIZE = 65536


@dataclass
class ProcessPipes:
    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    _transports: list[asyncio.BaseTransport]

    @classmethod
    async def open(cls, handed: HandedPipes) -> ProcessPipes:
        loop = asyncio.get_running_loop()
        transports: list[asyncio.BaseTransport] = []
        readers = []
        for fd in (handed.stdout, handed.stderr):
            reader = asyncio.StreamReader(limit=2**20)
            protocol = functools.partial(asyncio.StreamReaderProtocol, reader)
            read_transport, _ = await loop.connect_read_pipe(protocol, os.fdopen(fd, "rb", buffering=0))
            transports.append(read_transport)
            readers.append(reader)
        writer = None
        if handed.stdin is not None:
            write_transport, flow = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, os.fdopen(handed.stdin, "wb", buffering=0)
            )
            transports.append(write_transport)
            writer = asyncio.StreamWriter(write_transport, flow, None, loop)
        return cls(writer, readers[0], readers[1], transports)

    async def write(self, data: bytes) -> None:
        if self.stdin is None or self.stdin.is_closing():
            raise BrokenPipeError("stdin is closed")
        self.stdin.write(data)
        await self.stdin.drain()

    def close_stdin(self) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.close()

    def close(self) -> None:
        for transport in self._transports:
            with contextlib.suppress(Exception):
                transport.close()
