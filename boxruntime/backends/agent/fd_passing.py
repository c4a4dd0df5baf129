"""A managed process's stdio, held by the daemon itself: so relay data does not pass through
the agent.

Two ways to the same end, each over a connection of its own, blocking, run in a thread (asyncio
streams cannot receive file descriptors, and the main connection stays free meanwhile):
- ``fetch_fds``: the agent passes the process's pipes over the unix socket (SCM_RIGHTS);
- ``open_stdio``: where descriptors cannot cross (gVisor: the pipes live in its kernel), the
  daemon's connection becomes one stdio stream of a process the agent spawns next.
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


def open_stdio(path: str, proc_id: str, stdin: bool, timeout: float) -> tuple[HandedPipes, list[str | None]]:
    """Connections to the agent at ``path`` that it keeps as process ``proc_id``'s stdio sockets
    (see boxagent_stdio), and the tokens that name them in its spawn (stdin's None without one)."""
    tokens: list[str | None] = [f"{proc_id}.in" if stdin else None, f"{proc_id}.out", f"{proc_id}.err"]
    fds: list[int] = []
    try:
        for token in tokens:
            if token is not None:
                fds.append(_stdio_socket(path, token, timeout))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return (HandedPipes(fds[0], fds[1], fds[2]) if stdin else HandedPipes(None, fds[0], fds[1])), tokens


def _stdio_socket(path: str, token: str, timeout: float) -> int:
    """One connection the agent keeps as the stdio socket ``token``; once its reply is read,
    nothing but the process's own bytes follow."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        frames = wire.Decoder()
        read_frame_blocking(sock, frames)  # the greeting
        sock.sendall(wire.encode({wire.OP: wire.Op.STDIO, wire.ID: token}))
        header, _ = read_frame_blocking(sock, frames)  # read exactly: the process's bytes follow
        if header.get(wire.EV) != wire.Ev.REPLY or header.get(wire.ID) != token:
            raise ValueError(f"agent did not take the stdio socket: {str(header)[:200]}")
        sock.settimeout(None)
        return sock.detach()


def pipes_from(header: dict[str, Any], fds: list[int], name: str) -> HandedPipes:
    stdin = header.get(wire.TakeFds.STDIN)
    if wire.ERROR in header or len(fds) != (3 if stdin else 2):
        for fd in fds:
            os.close(fd)
        raise BoxSandboxError(f"sandbox agent {name} did not hand over the pipes: {header.get(wire.ERROR)}")
    if stdin:
        return HandedPipes(fds[0], fds[1], fds[2])
    return HandedPipes(None, fds[0], fds[1])
