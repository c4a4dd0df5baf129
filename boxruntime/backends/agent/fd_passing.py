"""Taking a process's pipes from the agent: file descriptors passed over the unix socket.

The daemon then reads and writes a managed process's stdio itself, so relay data does not pass
through the agent. It is a connection of its own, blocking, run in a thread: asyncio streams
cannot receive file descriptors (SCM_RIGHTS), and the main connection stays free meanwhile.
Everything the agent sends is checked: it runs inside the sandbox.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from boxruntime.backends.agent.frames import read_frame_blocking
from boxruntime.backends.agent.sandbox import boxagent_wire as wire
from boxruntime.errors import BoxSandboxError

_FIRST_READ = 65536  # the reply's first bytes, which carry the descriptors


@dataclass(frozen=True, slots=True)
class HandedPipes:
    """File descriptors of a process's stdio, now owned by the daemon."""

    stdin: int | None
    stdout: int
    stderr: int


def fetch_fds(path: str, token: str, target: str, timeout: float) -> tuple[dict[str, Any], list[int]]:
    """Ask the agent at ``path`` for the pipes of process ``target``; the reply and the fds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        frames = wire.Decoder()
        read_frame_blocking(sock, frames)  # the greeting, read exactly: fds come with the reply only
        sock.sendall(wire.encode({wire.OP: wire.Op.TAKE_FDS, wire.ID: token, wire.TARGET: target}))
        data, fds, _, _ = socket.recv_fds(sock, _FIRST_READ, 3)
        try:
            if not data:
                raise ValueError("agent closed the connection before its reply")
            frames.feed(data)
            header, _ = read_frame_blocking(sock, frames)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return header, fds


def pipes_from(header: dict[str, Any], fds: list[int], name: str) -> HandedPipes:
    stdin = header.get(wire.TakeFds.STDIN)
    if wire.ERROR in header or len(fds) != (3 if stdin else 2):
        for fd in fds:
            os.close(fd)
        raise BoxSandboxError(f"sandbox agent {name} did not hand over the pipes: {header.get(wire.ERROR)}")
    if stdin:
        return HandedPipes(fds[0], fds[1], fds[2])
    return HandedPipes(None, fds[0], fds[1])
