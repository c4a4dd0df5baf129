"""File operations in a session's sandbox.

``box_fs_*``: relative paths start at the session's workspace, and every path must stay under
the workspace, /tmp or an extra mount. The backend resolves a path *inside* the sandbox, so
symlinks are followed the way the sandbox sees them and cannot lead elsewhere.

The other methods take absolute paths and the roots to confine them to: a front door whose API
reaches the whole sandbox (E2B's) names ``/``; the sandbox's own permissions still apply.
"""

from __future__ import annotations

import base64
import contextlib
import posixpath
from collections.abc import AsyncIterator, Sequence
from typing import Any

from boxruntime.backends.contract import (
    Backend,
    FileChunk,
    FileInfo,
    FileWritten,
    Listing,
    Removed,
    SandboxHandle,
    SandboxUsage,
    Watch,
)
from boxruntime.errors import BoxValidationError
from boxruntime.models import (
    FS_MAX_CHUNK_BYTES,
    BoxSpec,
    FsEntry,
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
from boxruntime.runtime.sessions import SessionManager

SANDBOX_TMP = "/tmp"


def sandbox_path(spec: BoxSpec, path: str) -> str:
    return posixpath.normpath(posixpath.join(spec.mount_path, path))


def allowed_roots(spec: BoxSpec) -> list[str]:
    return [spec.mount_path, SANDBOX_TMP, *(m.mount_path for m in spec.active_extra_mounts())]


class SessionFiles:
    """File operations in sessions' sandboxes: LangBot-style requests (``box_fs_*``: paths
    relative to the workspace, confined to its mounts) and, for other front doors, absolute
    paths confined to roots they name. The backend does the work (see backends.contract)."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions

    @contextlib.asynccontextmanager
    async def _on(self, session_id: str) -> AsyncIterator[tuple[Backend[Any], SandboxHandle]]:
        async with self._sessions.lease_existing(session_id) as session:
            yield session.backend, session.handle

    @contextlib.asynccontextmanager
    async def _spec_paths(self, req: FsRequest) -> AsyncIterator[tuple[Backend[Any], SandboxHandle, str, list[str]]]:
        async with self._sessions.lease_existing(req.session_id) as session:
            spec = session.spec
            yield session.backend, session.handle, sandbox_path(spec, req.path), allowed_roots(spec)

    # ── LangBot-style (box_fs_*) ─────────────────────────────────────────

    async def read(self, req: FsReadRequest) -> FsReadResult:
        async with self._spec_paths(req) as (backend, handle, path, roots):
            chunk = await backend.read_file(handle, path, roots, req.offset, req.length or FS_MAX_CHUNK_BYTES)
        if req.encoding == "utf-8":
            try:
                text = chunk.data.decode("utf-8")
            except UnicodeDecodeError:
                raise BoxValidationError(f"{req.path} is not UTF-8 text; read it with encoding base64") from None
        else:
            text = base64.b64encode(chunk.data).decode("ascii")
        return FsReadResult(
            path=path,
            size=chunk.size,
            offset=chunk.offset,
            data=text,
            encoding=req.encoding,
            length=len(chunk.data),
            eof=chunk.eof,
            mode=chunk.mode,
            mtime=chunk.mtime,
        )

    async def write(self, req: FsWriteRequest) -> FsWriteResult:
        if req.encoding == "base64":
            try:
                body = base64.b64decode(req.data, validate=True)
            except ValueError:  # binascii.Error, or text that is not ASCII
                raise BoxValidationError("data is not valid base64") from None
        else:
            body = req.data.encode("utf-8")
        async with self._spec_paths(req) as (backend, handle, path, roots):
            done = await backend.write_file(
                handle,
                path,
                roots,
                body,
                mode=req.mode,
                append=req.append,
                offset=req.offset,
                make_parents=req.make_parents,
            )
        return FsWriteResult(path=path, size=done.size, bytes_written=done.bytes_written, mode=done.mode)

    async def list(self, req: FsListRequest) -> FsListResult:
        async with self._spec_paths(req) as (backend, handle, path, roots):
            listing = await backend.list_dir(
                handle,
                path,
                roots,
                recursive=req.recursive,
                max_entries=req.max_entries,
                include_hidden=req.include_hidden,
            )
        entries = [
            FsEntry(name=e.name, path=e.path, type=e.type or "other", size=e.size, mode=e.mode, mtime=e.mtime)
            for e in listing.entries
        ]
        return FsListResult(path=path, entries=entries, truncated=listing.truncated)

    async def stat(self, req: FsRequest) -> FsStatResult:
        async with self._spec_paths(req) as (backend, handle, path, roots):
            info = await backend.stat(handle, path, roots)
        if not info.exists:
            return FsStatResult(path=path, exists=False)
        return FsStatResult(
            path=path, exists=True, type=info.type, size=info.size, mode=info.mode, mtime=info.mtime, target=info.target
        )

    async def remove(self, req: FsRemoveRequest) -> FsRemoveResult:
        async with self._spec_paths(req) as (backend, handle, path, roots):
            done = await backend.remove(handle, path, roots, recursive=req.recursive)
        return FsRemoveResult(removed=path, type=done.type)

    # ── absolute paths, explicit roots (other front doors) ───────────────

    async def read_file(self, session_id: str, path: str, roots: Sequence[str], offset: int, length: int) -> FileChunk:
        async with self._on(session_id) as (backend, handle):
            return await backend.read_file(handle, path, roots, offset, length)

    async def write_file(
        self, session_id: str, path: str, roots: Sequence[str], data: bytes, *, append: bool = False, own: bool = False
    ) -> FileWritten:
        async with self._on(session_id) as (backend, handle):
            return await backend.write_file(handle, path, roots, data, append=append, own=own)

    async def list_dir(
        self, session_id: str, path: str, roots: Sequence[str], *, max_depth: int, max_entries: int
    ) -> Listing:
        async with self._on(session_id) as (backend, handle):
            return await backend.list_dir(
                handle, path, roots, recursive=max_depth != 1, max_depth=max_depth, max_entries=max_entries
            )

    async def stat_path(self, session_id: str, path: str, roots: Sequence[str]) -> FileInfo:
        async with self._on(session_id) as (backend, handle):
            return await backend.stat(handle, path, roots)

    async def remove_path(self, session_id: str, path: str, roots: Sequence[str], *, recursive: bool) -> Removed:
        async with self._on(session_id) as (backend, handle):
            return await backend.remove(handle, path, roots, recursive=recursive)

    async def make_dir(self, session_id: str, path: str, roots: Sequence[str]) -> FileInfo:
        async with self._on(session_id) as (backend, handle):
            return await backend.make_dir(handle, path, roots)

    async def move(self, session_id: str, source: str, destination: str, roots: Sequence[str]) -> FileInfo:
        async with self._on(session_id) as (backend, handle):
            return await backend.move(handle, source, destination, roots)

    async def watch(self, session_id: str, path: str, recursive: bool, roots: Sequence[str]) -> Watch:
        """Watch a directory in the session's sandbox; the caller closes the watch."""
        async with self._on(session_id) as (backend, handle):
            return await backend.watch(handle, path, roots, recursive=recursive)

    async def usage(self, session_id: str, disk_path: str) -> SandboxUsage:
        async with self._on(session_id) as (backend, handle):
            return await backend.usage(handle, disk_path)
