"""Chat files in the chat's sandbox, moved with the file API (``box_fs_*``; never base64
through a shell).

- Inbound media lands in ``/workspace/inbox/<name>``.
- Regular files the agent leaves in ``/workspace/outbox/`` go out with the reply. Dotfiles and
  directories stay. Before reading, a turn moves its files into
  ``/workspace/outbox/.sending-<message>/``, so each file belongs to exactly one turn: a turn
  run again after a crash finds its own files there, and none is sent twice. The directory
  is removed once the reply is stored.

Chats that share a sandbox (scope ``user`` or ``bot``) share these directories too.
"""

from __future__ import annotations

import logging
import mimetypes
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from boxruntime.errors import BoxError
from boxruntime.models import FsListRequest, FsRemoveRequest
from langbot_bridge.gateway.messages import InboundFile
from langbot_bridge.service import BoxService
from langbot_bridge.transfer import read_bytes, write_bytes

log = logging.getLogger(__name__)

INBOX_DIR = "/workspace/inbox"
OUTBOX_DIR = "/workspace/outbox"
STAGING_PREFIX = ".sending-"


@dataclass(frozen=True, slots=True)
class Collected:
    name: str
    mime_type: str
    data: bytes | None  # None: too large for the channel
    size: int


def mime_type_of(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


async def prepare(service: BoxService, session_id: str) -> None:
    """Create the session (with the service's defaults) and its inbox and outbox directories."""
    await service.ensure_session(session_id)
    await service.exec(session_id, f"mkdir -p {INBOX_DIR} {OUTBOX_DIR}", actor="gateway")


async def put_inbound(
    service: BoxService, session_id: str, files: Sequence[InboundFile], blobs: Sequence[bytes]
) -> list[str]:
    """Write each file to the inbox; returns the paths (names made unique within the message)."""
    paths: list[str] = []
    used: set[str] = set()
    for meta, data in zip(files, blobs, strict=True):
        name = meta.name
        stem, dot, ext = name.rpartition(".")
        counter = 1
        while name in used:
            counter += 1
            name = f"{stem}-{counter}.{ext}" if dot and stem else f"{meta.name}-{counter}"
        used.add(name)
        path = f"{INBOX_DIR}/{name}"
        await write_bytes(service.client, session_id, path, data)
        paths.append(path)
    return paths


def _staging(inbox_id: int) -> str:
    return f"{OUTBOX_DIR}/{STAGING_PREFIX}{inbox_id}"


async def take_outbox(service: BoxService, session_id: str, inbox_id: int, max_bytes: int) -> list[Collected]:
    """The files this turn sends, in name order; a file over ``max_bytes`` comes back without data."""
    client = service.client
    listing = await client.fs_list(FsListRequest(session_id=session_id, path=OUTBOX_DIR, max_entries=1000))
    staging = _staging(inbox_id)
    fresh = [e for e in listing.entries if e.type == "file" and not e.name.startswith(".")]
    leftover = any(e.name == staging.rsplit("/", 1)[-1] and e.type == "dir" for e in listing.entries)
    if not fresh and not leftover:
        return []
    if fresh:
        move = (
            f"mkdir -p {shlex.quote(staging)} && find {OUTBOX_DIR} -mindepth 1 -maxdepth 1 -type f ! -name '.*' "
            f"-exec mv -t {shlex.quote(staging)} -- {{}} +"
        )
        result = await service.exec(session_id, move, actor="gateway")
        if result.exit_code != 0:
            raise BoxError(f"could not collect the outbox files: {result.stderr.strip() or result.exit_code}")
    staged = await client.fs_list(FsListRequest(session_id=session_id, path=staging, max_entries=1000))
    collected: list[Collected] = []
    for entry in sorted(staged.entries, key=lambda e: e.name):
        if entry.type != "file":
            continue
        path = f"{staging}/{entry.name}"
        data = await read_bytes(client, session_id, path, max_bytes=max_bytes) if entry.size <= max_bytes else None
        collected.append(Collected(entry.name, mime_type_of(entry.name), data, entry.size))
    return collected


async def drop_staging(service: BoxService, session_id: str, inbox_id: int) -> None:
    """Remove the turn's staging directory once its files are stored (best effort: a leftover
    is only disk space; its files were stored with their turn)."""
    try:
        await service.client.fs_remove(FsRemoveRequest(session_id=session_id, path=_staging(inbox_id), recursive=True))
    except BoxError as exc:
        log.warning("could not remove %s in session %s: %s", _staging(inbox_id), session_id, exc)
