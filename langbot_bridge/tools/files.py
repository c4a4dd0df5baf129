"""The ``read``, ``write`` and ``edit`` tools, over the daemon's ``box_fs_*`` actions.

Everything happens inside the sandbox: relative paths start at /workspace, and the daemon
refuses paths outside the workspace, /tmp and extra mounts. The session is created first
(with the chat's spec), because file actions need an existing session.
"""

from __future__ import annotations

import base64
import binascii
import codecs
from typing import Literal

import pydantic

from boxruntime.models import (
    FsListRequest,
    FsReadRequest,
    FsRequest,
    FsStatResult,
)
from langbot_bridge.tools.base import Tool, ToolArgs, ToolError, ToolResult, ToolScope
from langbot_bridge.transfer import write_bytes

READ_MAX_BYTES = 51_200
READ_DEFAULT_LINES = 2000
READ_MAX_LINES = 10_000
READ_CHUNK_BYTES = 1024 * 1024
READ_MAX_SCAN_BYTES = 64 * 1024 * 1024  # how far a text read walks to reach its offset
DIR_MAX_ENTRIES = 10_000
WRITE_MAX_BYTES = 32 * 1024 * 1024
EDIT_MAX_BYTES = 1024 * 1024

PATH_HELP = "File path in the sandbox; relative paths start at /workspace."


async def _stat(scope: ToolScope, path: str) -> FsStatResult:
    await scope.service.ensure_session(scope.session_id)
    return await scope.service.client.fs_stat(FsRequest(session_id=scope.session_id, path=path))


# ── read ────────────────────────────────────────────────────────────────


class ReadArgs(ToolArgs):
    """Arguments of the ``read`` tool."""

    path: str = pydantic.Field(min_length=1, description=PATH_HELP + " A directory lists its entries.")
    offset: int = pydantic.Field(default=1, ge=1, description="First line to return (1-based), for text.")
    limit: int = pydantic.Field(
        default=READ_DEFAULT_LINES, ge=1, le=READ_MAX_LINES, description="Most lines to return, for text."
    )
    max_bytes: int = pydantic.Field(
        default=READ_MAX_BYTES, ge=1, le=READ_MAX_BYTES, description="Most bytes of content to return."
    )
    encoding: Literal["text", "base64"] = pydantic.Field(
        default="text", description="'text' for UTF-8 files; 'base64' for any bytes."
    )
    byte_offset: int = pydantic.Field(default=0, ge=0, description="Where a base64 read starts, in bytes.")


class ReadTextResult(ToolResult):
    """``read`` of a text file: a window of lines, and how to read on."""

    path: str
    content: str
    size_bytes: int
    start_line: int
    end_line: int  # start_line - 1 when no line was returned
    truncated: bool
    truncated_by: Literal["lines", "bytes"] | None = None
    next_offset: int | None = None  # the offset to read on from, when truncated


class ReadBinaryResult(ToolResult):
    """``read`` with ``encoding=base64``: a window of bytes, and how to read on."""

    path: str
    content: str
    encoding: Literal["base64"] = "base64"
    byte_offset: int
    length: int
    size_bytes: int
    has_more: bool
    next_byte_offset: int | None = None


class ReadDirectoryResult(ToolResult):
    """``read`` of a directory: its entries, one per line."""

    path: str
    content: str  # one name per line, directories with a trailing "/"
    is_directory: bool = True
    total: int
    truncated: bool


class _LineWindow:
    """Collects lines ``offset .. offset+limit-1`` within ``max_bytes`` as they stream by."""

    def __init__(self, args: ReadArgs) -> None:
        self.args = args
        self.lines: list[str] = []
        self.bytes = 0
        self.number = 0  # lines seen so far
        self.truncated_by: Literal["lines", "bytes"] | None = None

    @property
    def done(self) -> bool:
        return self.truncated_by is not None

    def feed(self, line: str) -> None:
        self.number += 1
        if self.number < self.args.offset or self.done:
            return
        if len(self.lines) >= self.args.limit:
            self.truncated_by = "lines"
            return
        size = len(line.encode("utf-8"))
        if self.bytes + size > self.args.max_bytes:
            if not self.lines:  # one line longer than max_bytes: return its head
                head = line.encode("utf-8")[: self.args.max_bytes].decode("utf-8", "ignore")
                self.lines.append(head)
            self.truncated_by = "bytes"
            return
        self.lines.append(line)
        self.bytes += size


async def _read_text(args: ReadArgs, scope: ToolScope) -> ReadTextResult:
    client = scope.service.client
    window = _LineWindow(args)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    partial = ""
    offset = 0
    size = 0
    resolved = args.path
    while not window.done:
        chunk = await client.fs_read(
            FsReadRequest(session_id=scope.session_id, path=args.path, offset=offset, length=READ_CHUNK_BYTES)
        )
        size, resolved = chunk.size, chunk.path
        offset += chunk.length
        try:
            partial += decoder.decode(base64.b64decode(chunk.data), final=chunk.eof)
        except UnicodeDecodeError:
            raise ToolError(f"{args.path} is not UTF-8 text; read it with encoding='base64'") from None
        *complete, partial = partial.split("\n")
        for line in complete:
            window.feed(line + "\n")
        if chunk.eof:
            if partial:
                window.feed(partial)
            break
        if offset >= READ_MAX_SCAN_BYTES:
            raise ToolError(
                f"line {args.offset} is beyond the first {READ_MAX_SCAN_BYTES} bytes of {args.path}; "
                "use grep to find the lines you need, or encoding='base64' with byte_offset"
            )
    if args.offset > 1 and args.offset > window.number:
        raise ToolError(f"offset {args.offset} is past the end of {args.path} ({window.number} lines)")
    end_line = args.offset + len(window.lines) - 1
    return ReadTextResult(
        path=resolved,
        content="".join(window.lines),
        size_bytes=size,
        start_line=args.offset,
        end_line=end_line,
        truncated=window.done,
        truncated_by=window.truncated_by,
        next_offset=end_line + 1 if window.done else None,
    )


async def _read_base64(args: ReadArgs, scope: ToolScope) -> ReadBinaryResult:
    chunk = await scope.service.client.fs_read(
        FsReadRequest(session_id=scope.session_id, path=args.path, offset=args.byte_offset, length=args.max_bytes)
    )
    next_offset = args.byte_offset + chunk.length
    return ReadBinaryResult(
        path=chunk.path,
        content=chunk.data,
        byte_offset=args.byte_offset,
        length=chunk.length,
        size_bytes=chunk.size,
        has_more=not chunk.eof,
        next_byte_offset=None if chunk.eof else next_offset,
    )


async def _read_directory(args: ReadArgs, scope: ToolScope) -> ReadDirectoryResult:
    listing = await scope.service.client.fs_list(
        FsListRequest(session_id=scope.session_id, path=args.path, max_entries=DIR_MAX_ENTRIES)
    )
    names = sorted(e.name + ("/" if e.type == "dir" else "") for e in listing.entries)
    return ReadDirectoryResult(
        path=listing.path, content="\n".join(names), total=len(names), truncated=listing.truncated
    )


async def run_read(args: ReadArgs, scope: ToolScope) -> ToolResult:
    """The ``read`` tool: a file's lines or bytes, or a directory's entries."""
    stat = await _stat(scope, args.path)
    if not stat.exists:
        raise ToolError(f"no such file or directory: {args.path}")
    if stat.type == "dir":
        return await _read_directory(args, scope)
    if args.encoding == "base64":
        return await _read_base64(args, scope)
    return await _read_text(args, scope)


READ = Tool(
    name="read",
    description=(
        "Read a file in your sandbox: text by lines (offset/limit), or any bytes as base64. "
        "A directory returns its entries."
    ),
    args=ReadArgs,
    run=run_read,
)


# ── write ───────────────────────────────────────────────────────────────


class WriteArgs(ToolArgs):
    """Arguments of the ``write`` tool."""

    path: str = pydantic.Field(min_length=1, description=PATH_HELP + " Parent directories are created.")
    content: str = pydantic.Field(description="What to write.")
    encoding: Literal["text", "base64"] = pydantic.Field(
        default="text", description="'text' writes UTF-8; 'base64' writes the decoded bytes."
    )
    mode: Literal["overwrite", "append"] = pydantic.Field(default="overwrite", description="Replace or append.")


class WriteResult(ToolResult):
    """``write``: where, and how many bytes."""

    path: str
    bytes_written: int
    size_bytes: int


def _content_bytes(args: WriteArgs) -> bytes:
    if args.encoding == "text":
        return args.content.encode("utf-8")
    try:
        return base64.b64decode(args.content, validate=True)
    except binascii.Error:
        raise ToolError("content is not valid base64") from None


async def _write_bytes(scope: ToolScope, path: str, data: bytes, append: bool, mode: int | None = None) -> WriteResult:
    result = await write_bytes(scope.service.client, scope.session_id, path, data, append=append, mode=mode)
    return WriteResult(path=result.path, bytes_written=result.bytes_written, size_bytes=result.size)


async def run_write(args: WriteArgs, scope: ToolScope) -> ToolResult:
    """The ``write`` tool: create or replace a file in the sandbox."""
    data = _content_bytes(args)
    if len(data) > WRITE_MAX_BYTES:
        raise ToolError(f"content is {len(data)} bytes; one write takes at most {WRITE_MAX_BYTES}")
    stat = await _stat(scope, args.path)
    if stat.exists and stat.type == "dir":
        raise ToolError(f"{args.path} is a directory")
    return await _write_bytes(scope, args.path, data, append=args.mode == "append")


WRITE = Tool(
    name="write",
    description="Write a file in your sandbox (UTF-8 text, or bytes given as base64); overwrite or append.",
    args=WriteArgs,
    run=run_write,
)


# ── edit ────────────────────────────────────────────────────────────────


class EditArgs(ToolArgs):
    """Arguments of the ``edit`` tool."""

    path: str = pydantic.Field(min_length=1, description=PATH_HELP)
    old_string: str = pydantic.Field(min_length=1, description="Exact text to replace, including whitespace.")
    new_string: str = pydantic.Field(description="The replacement text.")
    replace_all: bool = pydantic.Field(
        default=False, description="Replace every occurrence; otherwise old_string must occur exactly once."
    )


class EditResult(ToolResult):
    """``edit``: where, and how many replacements."""

    path: str
    replacements: int
    size_bytes: int


async def run_edit(args: EditArgs, scope: ToolScope) -> ToolResult:
    """The ``edit`` tool: replace text in a file, refusing an ambiguous match."""
    if args.old_string == args.new_string:
        raise ToolError("old_string and new_string are the same; there is nothing to change")
    stat = await _stat(scope, args.path)
    if not stat.exists:
        raise ToolError(f"no such file: {args.path} (use write to create it)")
    if stat.type != "file":
        raise ToolError(f"{args.path} is not a regular file")
    if (stat.size or 0) > EDIT_MAX_BYTES:
        raise ToolError(f"{args.path} is {stat.size} bytes; edit works on files up to {EDIT_MAX_BYTES} bytes")
    current = await scope.service.client.fs_read(
        FsReadRequest(session_id=scope.session_id, path=args.path, encoding="utf-8")
    )
    text = current.data
    count = text.count(args.old_string)
    if count == 0:
        raise ToolError(f"old_string not found in {args.path}; read the file and copy the text exactly")
    if count > 1 and not args.replace_all:
        raise ToolError(
            f"old_string matches {count} locations in {args.path}; include more surrounding text to make it "
            "unique, or set replace_all to true"
        )
    updated = text.replace(args.old_string, args.new_string).encode("utf-8")
    if len(updated) > EDIT_MAX_BYTES:
        raise ToolError(f"the edited file would be {len(updated)} bytes; edit keeps files under {EDIT_MAX_BYTES}")
    written = await _write_bytes(scope, args.path, updated, append=False, mode=current.mode & 0o7777)
    return EditResult(path=written.path, replacements=count, size_bytes=written.size_bytes)


EDIT = Tool(
    name="edit",
    description=(
        "Replace exact text in a file in your sandbox. old_string must match exactly once "
        "(or set replace_all); read the file first to copy it."
    ),
    args=EditArgs,
    run=run_edit,
)
