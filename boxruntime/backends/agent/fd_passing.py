"""Taking a process's pipes from the agent: file descriptors passed over the unix socket.

The daemon then reads and writes a managed process's stdio itself, so relay data does not pass
through the agent. It is a connection of its own, blocking, run in a thread: asyncio streams
cannot receive file descriptors (SCM_RIGHTS), and the main connection stays free meanwhile.
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


def pipes_from(header: dict[str, Any], fds: list[int], name: str) -> HandedPipes:
    if "error" in header or len(fds) != (3 if header.get("stdin") else 2):
        for fd in fds:
            os.close(fd)
        raise BoxSandboxError(f"sandbox agent {name} did not hand over the pipes: {header.get('error')}")
    if header.get("stdin"):
        return HandedPipes(fds[0], fds[1], fds[2])
    return HandedPipes(None, fds[0], fds[1])
