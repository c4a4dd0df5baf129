"""File operations in an E2B sandbox, through the SDK's ``sandbox.files`` (envd's
``filesystem.Filesystem`` and its ``/files`` HTTP routes), in the contract's words.

Paths come logical (the session's) and are confined to the roots the runtime names, then
translated (``paths.py``); what comes back names them as they were asked. envd does the work as
the sandbox's user, so the sandbox's own permissions apply. Where envd's semantics differ from
the contract's they are bridged here:

- a read at an offset streams the file and keeps only the asked range (envd reads whole files);
- a write with ``append`` or ``offset`` reads the file, splices, and writes it back (envd only
  replaces files); ``mode`` is set with ``chmod`` afterwards; ``make_parents=False`` checks the
  parent first (envd always makes parents);
- ``remove`` refuses a missing path (ENOENT) and a non-empty directory without ``recursive``
  (ENOTEMPTY), where envd's RemoveAll would succeed or remove it all;
- ``make_dir`` refuses an existing directory (EEXIST), as the contract says.
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from e2b import AsyncSandbox, FileType
from e2b.exceptions import FileNotFoundException

from boxruntime.backends.contract import (
    FileChunk,
    FileInfo,
    FileKind,
    FileWritten,
    Listing,
    Removed,
    SandboxFileError,
)
from boxruntime.backends.e2b.errors import sandbox_error
from boxruntime.backends.e2b.paths import SandboxPaths

MAX_LIST_DEPTH = 32  # a recursive listing "without limit" still stops somewhere
KINDS: dict[Any, FileKind] = {FileType.FILE: "file", FileType.DIR: "dir", FileType.SYMLINK: "symlink"}

RunQuiet = Callable[[list[str]], Awaitable[None]]


def file_info(entry: Any, path: str, name: str, paths: SandboxPaths) -> FileInfo:
    """envd's ``EntryInfo`` as the contract's ``FileInfo``. A symlink that envd followed (a
    ``stat``) comes with its target: it is reported as the link, leading to that target."""
    kind = KINDS.get(entry.type, "other")
    target = entry.symlink_target
    resolved: dict[str, Any] = {}
    if target is not None and kind != "symlink":
        resolved = {"resolved": paths.logical(target), "resolved_type": kind, "resolved_mode": entry.mode & 0o7777}
        kind = "symlink"
    return FileInfo(
        path=path,
        name=name,
        type=kind,
        size=entry.size,
        mode=entry.mode & 0o7777,
        mtime=entry.modified_time.timestamp(),
        owner=entry.owner,
        group=entry.group,
        target=None if target is None else paths.logical(target),
        **resolved,
    )


class SandboxFiles:
    def __init__(self, sandbox: AsyncSandbox, paths: SandboxPaths, run_quiet: RunQuiet) -> None:
        self._sbx = sandbox
        self.paths = paths
        self._run_quiet = run_quiet

    def _error(self, exc: Exception, doing: str) -> Exception:
        return sandbox_error(exc, doing, self.paths)

    async def _entry(self, real: str, logical: str) -> Any:
        try:
            return await self._sbx.files.get_info(real)
        except Exception as exc:
            raise self._error(exc, logical) from None

    async def stat(self, path: str, roots: Sequence[str]) -> FileInfo:
        real = self.paths.confined(path, roots)
        try:
            entry = await self._sbx.files.get_info(real)
        except FileNotFoundException:
            return FileInfo(path=path, name=posixpath.basename(path), exists=False)
        except Exception as exc:
            raise self._error(exc, path) from None
        return file_info(entry, path, posixpath.basename(path), self.paths)

    async def read_file(self, path: str, roots: Sequence[str], offset: int, length: int) -> FileChunk:
        real = self.paths.confined(path, roots)
        entry = await self._entry(real, path)
        if entry.type == FileType.DIR:
            raise SandboxFileError(f"{path} is a directory", "EISDIR")
        size = entry.size
        try:
            if offset >= size or length <= 0:
                data = b""
            elif offset == 0 and length >= size:
                data = bytes(await self._sbx.files.read(real, format="bytes"))
                size = len(data)  # what was read is the file, should it have changed since the stat
            else:
                data = await self._read_range(real, offset, length)
        except Exception as exc:
            raise self._error(exc, path) from None
        mtime = entry.modified_time.timestamp()
        return FileChunk(path, size, offset, data, offset + len(data) >= size, entry.mode & 0o7777, mtime)

    async def _read_range(self, real: str, offset: int, length: int) -> bytes:
        kept = bytearray()
        skip = offset
        async with await self._sbx.files.read(real, format="stream") as stream:
            async for chunk in stream:
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                kept += chunk[skip : skip + length - len(kept)]
                skip = 0
                if len(kept) >= length:
                    break
        return bytes(kept)

    async def write_file(
        self,
        path: str,
        roots: Sequence[str],
        data: bytes,
        *,
        mode: int | None = None,
        append: bool = False,
        offset: int | None = None,
        make_parents: bool = True,
    ) -> FileWritten:
        real = self.paths.confined(path, roots)
        if not make_parents:
            parent = await self.stat(posixpath.dirname(posixpath.normpath(path)), ["/"])
            if not parent.exists:
                raise SandboxFileError(f"{posixpath.dirname(path)} does not exist", "ENOENT")
            if parent.type != "dir" and parent.resolved_type != "dir":
                raise SandboxFileError(f"{posixpath.dirname(path)} is not a directory", "ENOTDIR")
        body = data
        if append or offset is not None:
            body = await self._spliced(real, path, data, append, offset)
        try:
            await self._sbx.files.write(real, body)
        except Exception as exc:
            raise self._error(exc, path) from None
        if mode is not None:
            await self._run_quiet(["chmod", format(mode & 0o7777, "o"), real])
        entry = await self._entry(real, path)
        return FileWritten(path, entry.size, len(data), entry.mode & 0o7777)

    async def _spliced(self, real: str, path: str, data: bytes, append: bool, offset: int | None) -> bytes:
        try:
            current = bytes(await self._sbx.files.read(real, format="bytes"))
        except FileNotFoundException:
            current = b""
        except Exception as exc:
            raise self._error(exc, path) from None
        if append:
            return current + data
        assert offset is not None
        return current[:offset].ljust(offset, b"\0") + data + current[offset + len(data) :]

    async def list_dir(
        self,
        path: str,
        roots: Sequence[str],
        *,
        recursive: bool = False,
        max_depth: int = 0,
        max_entries: int = 1000,
        include_hidden: bool = True,
    ) -> Listing:
        real = self.paths.confined(path, roots)
        depth = 1 if not recursive else (max_depth or MAX_LIST_DEPTH)
        try:
            entries = await self._sbx.files.list(real, depth=depth)
        except Exception as exc:
            raise self._error(exc, path) from None
        found = []
        for entry in entries:
            relative = posixpath.relpath(entry.path, real)
            if not include_hidden and any(part.startswith(".") for part in relative.split("/")):
                continue
            found.append(file_info(entry, relative, entry.name, self.paths))
        found.sort(key=lambda info: info.path)
        return Listing(path, found[:max_entries], len(found) > max_entries)

    async def remove(self, path: str, roots: Sequence[str], *, recursive: bool = False) -> Removed:
        real = self.paths.confined(path, roots)
        entry = await self._entry(real, path)
        kind = KINDS.get(entry.type, "other")
        if entry.symlink_target is not None:
            kind = "symlink"  # the link goes, not what it leads to
        elif kind == "dir" and not recursive:
            try:
                inside = await self._sbx.files.list(real, depth=1)
            except Exception as exc:
                raise self._error(exc, path) from None
            if inside:
                raise SandboxFileError(f"{path} is a directory that is not empty", "ENOTEMPTY")
        try:
            await self._sbx.files.remove(real)
        except Exception as exc:
            raise self._error(exc, path) from None
        return Removed(path, kind)

    async def make_dir(self, path: str, roots: Sequence[str]) -> FileInfo:
        real = self.paths.confined(path, roots)
        try:
            made = await self._sbx.files.make_dir(real)
        except Exception as exc:
            raise self._error(exc, path) from None
        if not made:
            raise SandboxFileError(f"{path} already exists", "EEXIST")
        return file_info(await self._entry(real, path), path, posixpath.basename(path), self.paths)

    async def move(self, source: str, destination: str, roots: Sequence[str]) -> FileInfo:
        real_source = self.paths.confined(source, roots)
        real_destination = self.paths.confined(destination, roots)
        try:
            entry = await self._sbx.files.rename(real_source, real_destination)
        except Exception as exc:
            raise self._error(exc, f"{source} -> {destination}") from None
        return file_info(entry, destination, posixpath.basename(destination), self.paths)
