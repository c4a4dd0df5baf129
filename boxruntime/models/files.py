"""File operation payloads (``box_fs_*``)."""

from __future__ import annotations

from typing import Literal

import pydantic

from boxruntime.models import bounds
from boxruntime.models.base import Model
from boxruntime.models.box import SessionIdRequest

FS_MAX_CHUNK_BYTES = 8 * 1024 * 1024
# base64 of FS_MAX_CHUNK_BYTES, padding included.
_MAX_BASE64_CHARS = (FS_MAX_CHUNK_BYTES + 2) // 3 * 4
FileType = Literal["file", "dir", "symlink", "other"]


class FsRequest(SessionIdRequest):
    """A path in a session; relative paths are taken from the session's workspace."""

    path: str

    @pydantic.field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value or "\0" in value:
            raise ValueError("path must be a non-empty path without NUL bytes")
        return bounds.path_text(value, "path")


class FsReadRequest(FsRequest):
    offset: int = pydantic.Field(default=0, ge=0, le=bounds.MAX_FILE_OFFSET)
    length: int | None = pydantic.Field(default=None, ge=1, le=FS_MAX_CHUNK_BYTES)
    encoding: Literal["base64", "utf-8"] = "base64"


class FsWriteRequest(FsRequest):
    """At most FS_MAX_CHUNK_BYTES of data (base64 or UTF-8); a larger file goes in pieces."""

    data: str = pydantic.Field(default="", max_length=_MAX_BASE64_CHARS)
    encoding: Literal["utf-8", "base64"] = "utf-8"
    mode: int | None = pydantic.Field(default=None, ge=0, le=0o7777)
    append: bool = False
    offset: int | None = pydantic.Field(default=None, ge=0, le=bounds.MAX_FILE_OFFSET)
    make_parents: bool = True

    @pydantic.model_validator(mode="after")
    def _data_fits_one_operation(self) -> FsWriteRequest:
        if self.encoding == "utf-8":
            bounds.bounded_text(self.data, "data", FS_MAX_CHUNK_BYTES)
        return self


class FsListRequest(FsRequest):
    recursive: bool = False
    max_entries: int = pydantic.Field(default=1000, ge=1, le=100_000)
    include_hidden: bool = True


class FsRemoveRequest(FsRequest):
    recursive: bool = False


class FsEntry(Model):
    name: str
    path: str  # relative to the listed directory
    type: FileType
    size: int
    mode: int
    mtime: float


class FsReadResult(Model):
    path: str
    size: int
    offset: int
    data: str
    encoding: Literal["base64", "utf-8"]
    length: int
    eof: bool
    mode: int
    mtime: float


class FsWriteResult(Model):
    path: str
    size: int
    bytes_written: int
    mode: int


class FsListResult(Model):
    path: str
    entries: list[FsEntry]
    truncated: bool


class FsStatResult(Model):
    path: str
    exists: bool
    type: FileType | None = None
    size: int | None = None
    mode: int | None = None
    mtime: float | None = None
    target: str | None = None


class FsRemoveResult(Model):
    removed: str
    type: FileType
