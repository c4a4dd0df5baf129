"""Whole files in a session, as bytes or text: ``BoxService.files``.

The daemon's ``box_fs_*`` actions need an existing session and move at most 8 MiB per call,
as base64 or UTF-8 on the wire. Here a session that does not exist yet is created first (with
the service's spec and the caller's request), large files travel in pieces, and callers see
``bytes`` and ``str`` only.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from boxruntime.errors import BoxSessionNotFoundError
from boxruntime.models import (
    FsListRequest,
    FsListResult,
    FsReadRequest,
    FsRemoveRequest,
    FsRemoveResult,
    FsRequest,
    FsStatResult,
    FsWriteRequest,
    FsWriteResult,
)

if TYPE_CHECKING:
    from langbot_bridge.service import BoxService

T = TypeVar("T")
CHUNK_BYTES = 4 * 1024 * 1024  # raw bytes per call: base64 keeps it well under the daemon's 8 MiB


class SessionFiles:
    """File operations in the sessions of one ``BoxService``; paths are the sandbox's (relative
    ones start at the session's workdir, /workspace by default)."""

    def __init__(self, service: BoxService) -> None:
        self._service = service

    async def _in_session(
        self, session_id: str, request: Mapping[str, Any] | None, operation: Callable[[], Awaitable[T]]
    ) -> T:
        """``operation`` in the session, created first if it does not exist yet."""
        self._service.require()
        try:
            return await operation()
        except BoxSessionNotFoundError:
            await self._service.ensure_session(session_id, request)
            return await operation()

    async def read_bytes(self, session_id: str, path: str, *, request: Mapping[str, Any] | None = None) -> bytes:
        """The whole file."""
        client = self._service.client

        async def read() -> bytes:
            data = bytearray()
            while True:
                piece = await client.fs_read(
                    FsReadRequest(session_id=session_id, path=path, offset=len(data), length=CHUNK_BYTES)
                )
                data += base64.b64decode(piece.data) if piece.encoding == "base64" else piece.data.encode()
                if piece.eof or piece.length == 0:
                    return bytes(data)

        return await self._in_session(session_id, request, read)

    async def read_text(
        self, session_id: str, path: str, *, encoding: str = "utf-8", request: Mapping[str, Any] | None = None
    ) -> str:
        """The whole file, decoded (UnicodeDecodeError when it is not text in ``encoding``)."""
        return (await self.read_bytes(session_id, path, request=request)).decode(encoding)

    async def write(
        self,
        session_id: str,
        path: str,
        data: bytes | str,
        *,
        mode: int | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> FsWriteResult:
        """Create or replace the file (parent directories included); ``str`` is written as UTF-8."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        client = self._service.client

        async def write() -> FsWriteResult:
            result: FsWriteResult | None = None
            offset = 0
            while result is None or offset < len(raw):
                piece = raw[offset : offset + CHUNK_BYTES]
                result = await client.fs_write(
                    FsWriteRequest(
                        session_id=session_id,
                        path=path,
                        data=base64.b64encode(piece).decode("ascii"),
                        encoding="base64",
                        mode=mode if offset == 0 else None,
                        append=offset > 0,
                    )
                )
                offset += len(piece)
            return result

        return await self._in_session(session_id, request, write)

    async def list(
        self,
        session_id: str,
        path: str = ".",
        *,
        recursive: bool = False,
        include_hidden: bool = True,
        max_entries: int = 1000,
        request: Mapping[str, Any] | None = None,
    ) -> FsListResult:
        """The entries of a directory (``truncated`` once ``max_entries`` is reached)."""
        listing = FsListRequest(
            session_id=session_id,
            path=path,
            recursive=recursive,
            include_hidden=include_hidden,
            max_entries=max_entries,
        )
        return await self._in_session(session_id, request, lambda: self._service.client.fs_list(listing))

    async def stat(self, session_id: str, path: str, *, request: Mapping[str, Any] | None = None) -> FsStatResult:
        """What is at ``path`` (``exists`` False when nothing is)."""
        target = FsRequest(session_id=session_id, path=path)
        return await self._in_session(session_id, request, lambda: self._service.client.fs_stat(target))

    async def remove(
        self, session_id: str, path: str, *, recursive: bool = False, request: Mapping[str, Any] | None = None
    ) -> FsRemoveResult:
        """Remove a file, or a directory (``recursive`` when it is not empty)."""
        target = FsRemoveRequest(session_id=session_id, path=path, recursive=recursive)
        return await self._in_session(session_id, request, lambda: self._service.client.fs_remove(target))
