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

import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from boxruntime.errors import BoxSandboxError

HEADER = struct.Struct(">II")
MAX_HEADER = 1 << 20
MAX_BODY = 32 << 20


@dataclass(frozen=True, slots=True)
class HandedPipes:
    """File descriptors of a process's stdio, now owned by the daemon."""

    stdin: int | None
    stdout: int
    stderr: int


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ValueError("agent closed the connection mid-frame")
        data += chunk
    return data


def _frame_size(data: bytes) -> int:
    if len(data) < HEADER.size:
        raise ValueError("short frame from the agent")
    hlen, blen = HEADER.unpack_from(data)
    if hlen > MAX_HEADER or blen > MAX_BODY:
        raise ValueError("agent frame too large")
    return int(HEADER.size + hlen + blen)


def _read_frame_blocking(sock: socket.socket) -> bytes:
    head = _read_exactly(sock, HEADER.size)
    return head + _read_exactly(sock, _frame_size(head) - HEADER.size)


def fetch_fds(path: str, token: str, target: str, timeout: float) -> tuple[dict[str, Any], list[int]]:
    """Ask the agent at ``path`` for the pipes of process ``target``; the reply and the fds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        _read_frame_blocking(sock)  # the greeting, read exactly: fds come with the reply only
        raw = json.dumps({"op": "take_fds", "id": token, "target": target}).encode()
        sock.sendall(HEADER.pack(len(raw), 0) + raw)
        data, fds, _, _ = socket.recv_fds(sock, 65536, 3)
        data += _read_exactly(sock, _frame_size(data) - len(data))
        header = json.loads(data[HEADER.size : _frame_size(data)])
        if not isinstance(header, dict):
            raise ValueError("agent reply is not an object")
        return header, fds


def open_stdio(path: str, token: str, timeout: float) -> int:
    """A connection to the agent at ``path`` that it keeps as the stdio socket ``token`` (see
    boxagent_stdio); once the reply is read, nothing but the process's own bytes follow."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        _read_frame_blocking(sock)  # the greeting
        raw = json.dumps({"op": "stdio", "id": token}).encode()
        sock.sendall(HEADER.pack(len(raw), 0) + raw)
        reply = _read_frame_blocking(sock)
        hlen, _ = HEADER.unpack_from(reply)
        header = json.loads(reply[HEADER.size : HEADER.size + hlen])
        if not isinstance(header, dict) or header.get("ev") != "reply" or header.get("id") != token:
            raise ValueError(f"agent did not take the stdio socket: {str(header)[:200]}")
        sock.settimeout(None)
        return sock.detach()


def pipes_from(header: dict[str, Any], fds: list[int], name: str) -> HandedPipes:
    if "error" in header or len(fds) != (3 if header.get("stdin") else 2):
        for fd in fds:
            os.close(fd)
        raise BoxSandboxError(f"sandbox agent {name} did not hand over the pipes: {header.get('error')}")
    if header.get("stdin"):
        return HandedPipes(fds[0], fds[1], fds[2])
    return HandedPipes(None, fds[0], fds[1])
