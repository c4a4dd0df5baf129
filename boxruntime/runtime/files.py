"""File operations in a session's sandbox (``box_fs_*``), done by the in-sandbox agent.

Relative paths start at the session's workspace. Every path must stay under the workspace,
/tmp or an extra mount; the agent resolves it *inside* the sandbox, so symlinks are followed
the way the sandbox sees them and cannot lead elsewhere.

``op`` and ``watch`` take absolute paths and the roots to confine them to: a front door whose
API reaches the whole sandbox (E2B's) names ``/``; the sandbox's own permissions still apply,
since the agent runs as the sandbox user.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from typing import Any

from boxruntime.backends.agent.watch import AgentWatch
from boxruntime.errors import BoxValidationError
from boxruntime.models import (
    BoxSpec,
    FsListRequest,
    FsListResult,
    FsReadRequest,
    FsReadResult,
    FsRemoveRequest,
    FsRemoveResult,
    FsRequest,
    FsStatResult,
    FsWriteRequest,
    FsWriteResult,
)
from boxruntime.runtime.sessions import Session, SessionManager

SANDBOX_TMP = "/tmp"


def sandbox_path(spec: BoxSpec, path: str) -> str:
    return posixpath.normpath(posixpath.join(spec.mount_path, path))


def allowed_roots(spec: BoxSpec) -> list[str]:
    return [spec.mount_path, SANDBOX_TMP, *(m.mount_path for m in spec.active_extra_mounts())]


class SessionFiles:
    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions

    async def _op(
        self, req: FsRequest, op: str, fields: dict[str, Any], body: bytes = b""
    ) -> tuple[Session, dict[str, Any], bytes]:
        async with self._sessions.lease_existing(req.session_id) as session:
            spec = session.spec
            header = {**fields, "path": sandbox_path(spec, req.path), "roots": allowed_roots(spec)}
            reply, data = await session.backend.file_op(session.handle, op, header, body)
        return session, reply, data

    async def op(
        self, session_id: str, op: str, fields: dict[str, Any], roots: list[str], body: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        """One agent file operation (read, write, list, stat, remove, mkdir, move) on absolute
        paths, confined to ``roots``."""
        async with self._sessions.lease_existing(session_id) as session:
            return await session.backend.file_op(session.handle, op, {**fields, "roots": roots}, body)

    async def watch(self, session_id: str, path: str, recursive: bool, roots: list[str]) -> AgentWatch:
        """Watch a directory in the session's sandbox; the caller closes the watch."""
        async with self._sessions.lease_existing(session_id) as session:
            fields = {"path": path, "recursive": recursive, "roots": roots}
            return await session.backend.watch(session.handle, fields)

    async def read(self, req: FsReadRequest) -> FsReadResult:
        _, reply, data = await self._op(req, "read", {"offset": req.offset, "length": req.length})
        if req.encoding == "utf-8":
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise BoxValidationError(f"{req.path} is not UTF-8 text; read it with encoding base64") from None
        else:
            text = base64.b64encode(data).decode("ascii")
        return FsReadResult(
            path=reply["path"],
            size=reply["size"],
            offset=reply["offset"],
            data=text,
            encoding=req.encoding,
            length=len(data),
            eof=reply["eof"],
            mode=reply["mode"],
            mtime=reply["mtime"],
        )

    async def write(self, req: FsWriteRequest) -> FsWriteResult:
        if req.encoding == "base64":
            try:
                body = base64.b64decode(req.data, validate=True)
            except binascii.Error:
                raise BoxValidationError("data is not valid base64") from None
        else:
            body = req.data.encode("utf-8")
        fields = {"mode": req.mode, "append": req.append, "offset": req.offset, "make_parents": req.make_parents}
        _, reply, _ = await self._op(req, "write", fields, body)
        return FsWriteResult(
            path=reply["path"], size=reply["size"], bytes_written=reply["bytes_written"], mode=reply["mode"]
        )

    async def list(self, req: FsListRequest) -> FsListResult:
        fields = {"recursive": req.recursive, "max_entries": req.max_entries, "include_hidden": req.include_hidden}
        _, reply, _ = await self._op(req, "list", fields)
        return FsListResult.model_validate(reply)

    async def stat(self, req: FsRequest) -> FsStatResult:
        _, reply, _ = await self._op(req, "stat", {})
        return FsStatResult.model_validate(reply)

    async def remove(self, req: FsRemoveRequest) -> FsRemoveResult:
        _, reply, _ = await self._op(req, "remove", {"recursive": req.recursive})
        return FsRemoveResult(removed=reply["path"], type=reply["type"])
