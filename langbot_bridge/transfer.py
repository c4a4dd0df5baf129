"""Whole files in and out of a session through the file API (``box_fs_*``), in chunks under the
daemon's per-call cap. Binary-safe; nothing passes through a shell.

The agent tools write with these, and the chat gateway moves chat files (inbound media, files
the agent leaves for the user) with them.
"""

from __future__ import annotations

import base64

from boxruntime.errors import BoxValidationError
from boxruntime.models import FsReadRequest, FsWriteRequest, FsWriteResult
from langbot_bridge.client import BoxClient

WRITE_CHUNK_BYTES = 4 * 1024 * 1024  # under the daemon's 8 MiB per call, base64 included
READ_CHUNK_BYTES = 4 * 1024 * 1024


async def write_bytes(
    client: BoxClient, session_id: str, path: str, data: bytes, *, append: bool = False, mode: int | None = None
) -> FsWriteResult:
    """Write ``data`` to ``path`` (parents created); the first chunk truncates unless appending.
    Returns the last chunk's result with ``bytes_written`` summed over all chunks."""
    written = 0
    result: FsWriteResult | None = None
    for start in range(0, max(len(data), 1), WRITE_CHUNK_BYTES):
        piece = data[start : start + WRITE_CHUNK_BYTES]
        result = await client.fs_write(
            FsWriteRequest(
                session_id=session_id,
                path=path,
                data=base64.b64encode(piece).decode("ascii"),
                encoding="base64",
                append=append or start > 0,
                mode=mode,
            )
        )
        written += result.bytes_written
    assert result is not None
    return result.model_copy(update={"bytes_written": written})


async def read_bytes(client: BoxClient, session_id: str, path: str, *, max_bytes: int) -> bytes:
    """The whole file at ``path``; ``BoxValidationError`` when it is larger than ``max_bytes``
    (checked on the first chunk, before the rest is read)."""
    parts: list[bytes] = []
    offset = 0
    while True:
        chunk = await client.fs_read(
            FsReadRequest(session_id=session_id, path=path, offset=offset, length=READ_CHUNK_BYTES)
        )
        if chunk.size > max_bytes:
            raise BoxValidationError(f"{path} is {chunk.size} bytes, more than the {max_bytes} allowed here")
        parts.append(base64.b64decode(chunk.data))
        offset += chunk.length
        if chunk.eof or chunk.length == 0:
            return b"".join(parts)
