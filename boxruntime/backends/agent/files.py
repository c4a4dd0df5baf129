"""File operations by the sandbox's agent: its requests, and its replies read into the
contract's types. The agent runs inside the sandbox, so every reply is checked here and a
malformed one is the agent's failure, never the runtime's."""

from __future__ import annotations

from typing import Any

import pydantic

from boxruntime.backends.agent.client import AgentClient
from boxruntime.backends.agent.sandbox import boxagent_wire as wire
from boxruntime.backends.agent.watch import AgentWatch
from boxruntime.backends.contract import FileChunk, FileInfo, FileWritten, Listing, Removed, SandboxUsage
from boxruntime.errors import BoxSandboxError

_ENTRY_TYPES = frozenset((wire.EntryType.FILE, wire.EntryType.DIR, wire.EntryType.SYMLINK, wire.EntryType.OTHER))


async def request(
    agent: AgentClient, op: str, fields: dict[str, Any], body: bytes = b""
) -> tuple[dict[str, Any], bytes]:
    """One file operation; the agent's refusal is an AgentOpError, a SandboxFileError with its
    errno name."""
    return await agent.request(wire.Op.FS, {**fields, wire.Fs.OPERATION: op}, body)


async def watch(agent: AgentClient, fields: dict[str, Any]) -> AgentWatch:
    return await agent.watch(fields)


def _malformed(op: str, exc: Exception) -> BoxSandboxError:
    return BoxSandboxError(f"the sandbox agent's {op} reply is malformed: {exc}")


def _int(reply: dict[str, Any], key: str) -> int:
    value = reply.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} is not an integer")
    return value


def _float(reply: dict[str, Any], key: str) -> float:
    value = reply.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{key} is not a number")
    return float(value)


def chunk(reply: dict[str, Any], data: bytes, path: str) -> FileChunk:
    try:
        return FileChunk(
            path=path,
            size=_int(reply, wire.Entry.SIZE),
            offset=_int(reply, wire.Fs.OFFSET),
            data=data,
            eof=bool(reply.get(wire.Fs.EOF)),
            mode=_int(reply, wire.Entry.MODE),
            mtime=_float(reply, wire.Entry.MTIME),
        )
    except ValueError as exc:
        raise _malformed(wire.FsOp.READ, exc) from None


def written(reply: dict[str, Any], path: str) -> FileWritten:
    try:
        return FileWritten(
            path=path,
            size=_int(reply, wire.Entry.SIZE),
            bytes_written=_int(reply, wire.Fs.BYTES_WRITTEN),
            mode=_int(reply, wire.Entry.MODE),
        )
    except ValueError as exc:
        raise _malformed(wire.FsOp.WRITE, exc) from None


def info(reply: dict[str, Any], path: str) -> FileInfo:
    try:
        return FileInfo.model_validate(dict(reply, path=path))  # the contract names it as the caller did
    except pydantic.ValidationError as exc:
        raise _malformed(wire.FsOp.STAT, exc) from None


def listing(reply: dict[str, Any], path: str) -> Listing:
    entries = reply.get(wire.Fs.ENTRIES)
    if not isinstance(entries, list):
        raise _malformed(wire.FsOp.LIST, ValueError("entries is not a list"))
    try:
        return Listing(
            path=path,
            entries=[FileInfo.model_validate(entry) for entry in entries],
            truncated=bool(reply.get(wire.Fs.TRUNCATED)),
        )
    except pydantic.ValidationError as exc:
        raise _malformed(wire.FsOp.LIST, exc) from None


def removed(reply: dict[str, Any], path: str) -> Removed:
    kind = reply.get(wire.Entry.TYPE)
    if kind not in _ENTRY_TYPES:
        raise _malformed(wire.FsOp.REMOVE, ValueError("type unknown"))
    return Removed(path=path, type=kind)


def usage(reply: dict[str, Any]) -> SandboxUsage:
    try:
        disk_total = reply.get(wire.Fs.DISK_TOTAL)
        disk_used = reply.get(wire.Fs.DISK_USED)
        return SandboxUsage(
            cpu_sec=_float(reply, wire.Fs.CPU_SEC),
            mem_bytes=_int(reply, wire.Fs.MEM_BYTES),
            disk_total=disk_total if isinstance(disk_total, int) else None,
            disk_used=disk_used if isinstance(disk_used, int) else None,
        )
    except ValueError as exc:
        raise _malformed(wire.FsOp.USAGE, exc) from None
