"""``sbx.files``: whole files in the sandbox, as text or bytes (no base64 in sight).

Paths are the sandbox's; relative ones start at /workspace. The daemon confines them to the
workspace, /tmp and the sandbox's mounts. Every call works on a sandbox whose session does not
exist yet (or any more): it is created first, with the sandbox's spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from boxruntime.models import FsEntry, FsStatResult, FsWriteResult

if TYPE_CHECKING:
    from langbot_bridge.sandbox.sandbox import Sandbox


class Files:
    """Files in one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def read(self, path: str, *, encoding: str = "utf-8") -> str:
        """The file as text (UnicodeDecodeError when it is not text: use ``read_bytes``)."""
        sandbox = self._sandbox
        files = sandbox.service.files
        return await files.read_text(sandbox.sandbox_id, path, encoding=encoding, request=sandbox.request)

    async def read_bytes(self, path: str) -> bytes:
        """The file as bytes."""
        sandbox = self._sandbox
        return await sandbox.service.files.read_bytes(sandbox.sandbox_id, path, request=sandbox.request)

    async def write(self, path: str, data: str | bytes, *, mode: int | None = None) -> FsWriteResult:
        """Create or replace the file, and its parent directories; text is written as UTF-8."""
        sandbox = self._sandbox
        return await sandbox.service.files.write(sandbox.sandbox_id, path, data, mode=mode, request=sandbox.request)

    async def list(self, path: str = ".", *, recursive: bool = False, max_entries: int = 1000) -> list[FsEntry]:
        """The entries of a directory (their ``path`` relative to it); at most ``max_entries``."""
        sandbox = self._sandbox
        listing = await sandbox.service.files.list(
            sandbox.sandbox_id, path, recursive=recursive, max_entries=max_entries, request=sandbox.request
        )
        return listing.entries

    async def stat(self, path: str) -> FsStatResult:
        """What is at ``path``: type, size, mode, mtime (``exists`` False when nothing is)."""
        sandbox = self._sandbox
        return await sandbox.service.files.stat(sandbox.sandbox_id, path, request=sandbox.request)

    async def exists(self, path: str) -> bool:
        """Whether anything is at ``path``."""
        return (await self.stat(path)).exists

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, or a directory (``recursive`` when it is not empty)."""
        sandbox = self._sandbox
        await sandbox.service.files.remove(sandbox.sandbox_id, path, recursive=recursive, request=sandbox.request)
