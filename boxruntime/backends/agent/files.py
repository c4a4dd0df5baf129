"""File operations by the sandbox's agent: its requests, and its replies read into the
contract's types. The agent runs inside the sandbox, so every reply is checked here and a
malformed one is the agent's failure, never the runtime's."""

from __future__ import annotations

from typing import Any

import pydantic

from boxruntime.backends.agent.client import AgentClient
from boxruntime.backends.agent.watch import AgentWatch
from boxruntime.backends.contract import FileChunk, FileInfo, FileWritten, Listing, Removed, SandboxUsage
from boxruntime.errors import BoxSandboxError


async def request(
    agent: AgentClient, op: str, fields: dict[str, Any], body: bytes = b""
) -> tuple[dict[str, Any], bytes]:
    """One file operation; the agent's refusal is an AgentOpError, a SandboxFileError with its
    errno name."""
    return await agent.request("fs", {**fields, "fs": op}, body)


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
            size=_int(reply, "size"),
            offset=_int(reply, "offset"),
            data=data,
            eof=bool(reply.get("eof")),
            mode=_int(reply, "mode"),
            mtime=_float(reply, "mtime"),
        )
    except ValueError as exc:
        raise _malformed("read", exc) from None


def written(reply: dict[str, Any], path: str) -> FileWritten:
    try:
        return FileWritten(
            path=path, size=_int(reply, "size"), bytes_written=_int(reply, "bytes_written"), mode=_int(reply, "mode")
        )
    except ValueError as exc:
        raise _malformed("write", exc) from None


def info(reply: dict[str, Any], path: str) -> FileInfo:
    try:
        return FileInfo.model_validate({**reply, "path": path})
    except pydantic.ValidationError as exc:
        raise _malformed("stat", exc) from None


def listing(reply: dict[str, Any], path: str) -> Listing:
    entries = reply.get("entries")
    if not isinstance(entries, list):
        raise _malformed("list", ValueError("entries is not a list"))
    try:
        return Listing(
            path=path,
            entries=[FileInfo.model_validate(entry) for entry in entries],
            truncated=bool(reply.get("truncated")),
        )
    except pydantic.ValidationError as exc:
        raise _malformed("list", exc) from None


def removed(reply: dict[str, Any], path: str) -> Removed:
    kind = reply.get("type")
    if kind not in ("file", "dir", "symlink", "other"):
        raise _malformed("remove", ValueError("type unknown"))
    return Removed(path=path, type=kind)


def usage(reply: dict[str, Any]) -> SandboxUsage:
    try:
        disk_total = reply.get("disk_total")
        disk_used = reply.get("disk_used")
        return SandboxUsage(
            cpu_sec=_float(reply, "cpu_sec"),
            mem_bytes=_int(reply, "mem_bytes"),
            disk_total=disk_total if isinstance(disk_total, int) else None,
            disk_used=disk_used if isinstance(disk_used, int) else None,
        )
    except ValueError as exc:
        raise _malformed("usage", exc) from None
