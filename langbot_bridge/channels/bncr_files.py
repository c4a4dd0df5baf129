"""bncr file transfer V1 (seed 003 §8), both ways, in 256 KB chunks.

Client to gateway: ``bncr.file.init`` -> ``bncr.file.chunk``... -> ``bncr.file.complete`` (sizes
and SHA-256 checked) returns a ``path``, which a following ``bncr.inbound`` names; ``abort``
drops a transfer. Finished uploads wait in memory for that inbound (at most ``ttl`` seconds;
they are not kept across a restart: the client sends again after an error).

Gateway to client: ``bncr.file.init`` -> ``bncr.file.chunk`` per chunk, each acknowledged by
``bncr.file.ack {stage:"chunk"}`` and tried again (up to ``retries`` times) when the ack fails
or does not come -> ``bncr.file.complete`` acknowledged with the client's ``path``, which the
``bncr.push`` then carries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from langbot_bridge.channels.bncr_protocol import FileAck, FileChunk, FileInit, Route, event
from langbot_bridge.gateway.messages import InboundFile

MAX_TRANSFERS = 32  # unfinished uploads at once, per channel
BUFFERED_FILES = 4  # uploads (open or waiting for their inbound) hold at most this many maximal files


class TransferError(Exception):
    """A transfer step failed; the message is what the client is told."""


@dataclass
class _Upload:
    init: FileInit
    account: str
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finished:
    meta: InboundFile
    data: bytes
    at: float


class Uploads:
    """Client-to-gateway transfers: open ones by ``transferId``, finished ones by the path a
    ``bncr.inbound`` names, all within a memory budget and a time to live."""

    def __init__(self, max_bytes: int, ttl: float) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._open: dict[str, _Upload] = {}
        self._done: dict[str, Finished] = {}
        self.budget = BUFFERED_FILES * max_bytes  # memory all uploads may hold together

    def buffered(self) -> int:
        """Bytes held by open and finished uploads together."""
        held = sum(len(c) for upload in self._open.values() for c in upload.chunks.values())
        return held + sum(len(f.data) for f in self._done.values())

    def _prune(self, now: float) -> None:
        for key in [k for k, u in self._open.items() if now - u.started > self.ttl]:
            del self._open[key]
        for key in [k for k, f in self._done.items() if now - f.at > self.ttl]:
            del self._done[key]

    def init(self, params: FileInit, account: str) -> dict[str, Any]:
        """Open a transfer (a repeated init of an open one is answered ``duplicated``); raises
        ``TransferError`` when the file is too large, its chunk count is wrong, or too many are open."""
        now = time.time()
        self._prune(now)
        if params.transferId in self._open:
            return {"ok": True, "transferId": params.transferId, "status": "transferring", "duplicated": True}
        if params.fileSize > self.max_bytes:
            raise TransferError(f"file of {params.fileSize} bytes exceeds the {self.max_bytes}-byte limit")
        if params.totalChunks != -(-params.fileSize // params.chunkSize):
            raise TransferError("totalChunks does not match fileSize and chunkSize")
        if len(self._open) >= MAX_TRANSFERS:
            raise TransferError("too many unfinished transfers; finish or abort one first")
        self._open[params.transferId] = _Upload(params, account, now)
        return {"ok": True, "transferId": params.transferId, "status": "init"}

    def chunk(self, params: FileChunk) -> dict[str, Any]:
        """Store one chunk after checking its index, base64, size and SHA-256."""
        upload = self._open.get(params.transferId)
        if upload is None:
            raise TransferError("transfer not found")
        if params.chunkIndex >= upload.init.totalChunks:
            raise TransferError(f"chunkIndex {params.chunkIndex} is past totalChunks {upload.init.totalChunks}")
        try:
            data = base64.b64decode(params.base64, validate=True)
        except (binascii.Error, ValueError):
            raise TransferError("chunk base64 is invalid") from None
        if params.size and len(data) != params.size:
            raise TransferError(f"chunk size mismatch expected={params.size} got={len(data)}")
        if len(data) > upload.init.chunkSize or self.buffered() + len(data) > self.budget:
            raise TransferError("uploads hold too much data; finish or abort some first")
        if params.chunkSha256 and hashlib.sha256(data).hexdigest() != params.chunkSha256.lower():
            raise TransferError("chunk sha256 mismatch")
        upload.chunks[params.chunkIndex] = data
        return {
            "ok": True,
            "transferId": params.transferId,
            "chunkIndex": params.chunkIndex,
            "offset": params.offset,
            "received": len(upload.chunks),
            "totalChunks": upload.init.totalChunks,
        }

    def complete(self, transfer_id: str) -> dict[str, Any]:
        """Join the chunks, check size and SHA-256, and return the ``path`` an inbound names."""
        upload = self._open.get(transfer_id)
        if upload is None:
            raise TransferError("transfer not found")
        init = upload.init
        if len(upload.chunks) < init.totalChunks:
            raise TransferError(f"chunk not complete received={len(upload.chunks)} total={init.totalChunks}")
        data = b"".join(upload.chunks[i] for i in range(init.totalChunks))
        del self._open[transfer_id]
        if len(data) != init.fileSize:
            raise TransferError(f"file size mismatch expected={init.fileSize} got={len(data)}")
        digest = hashlib.sha256(data).hexdigest()
        if init.fileSha256 and digest != init.fileSha256.lower():
            raise TransferError("file sha256 mismatch")
        meta = InboundFile(name=init.fileName, mime_type=init.mimeType, size=len(data))
        path = f"bncr-upload/{transfer_id}/{meta.name}"
        self._done[path] = Finished(meta, data, time.time())
        return {
            "ok": True,
            "transferId": transfer_id,
            "path": path,
            "size": len(data),
            "fileName": meta.name,
            "mimeType": meta.mime_type,
            "fileSha256": digest,
        }

    def abort(self, transfer_id: str) -> dict[str, Any]:
        """Drop an open transfer (an unknown one is answered ``not-found``, not an error)."""
        found = self._open.pop(transfer_id, None)
        if found is None:
            return {"ok": True, "transferId": transfer_id, "message": "not-found"}
        return {"ok": True, "transferId": transfer_id, "status": "aborted"}

    def take(self, path: str) -> Finished | None:
        """Hand over (and forget) the finished upload at ``path``; None when unknown or expired."""
        self._prune(time.time())
        return self._done.pop(path, None)

    def __len__(self) -> int:
        return len(self._open)


# ── gateway to client ────────────────────────────────────────────────────


class AckWaiters:
    """``bncr.file.ack`` and ``bncr.ack`` frames, matched to whoever waits for them."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str, int], tuple[anyio.Event, list[FileAck]]] = {}

    def expect(self, transfer_id: str, stage: str, index: int = -1) -> Callable[[float], Awaitable[FileAck | None]]:
        """Register before sending; the returned function waits up to N seconds (None: no ack)."""
        key = (transfer_id, stage, index)
        done = anyio.Event()
        box: list[FileAck] = []
        self._waiting[key] = (done, box)

        async def wait(timeout: float) -> FileAck | None:
            try:
                with anyio.move_on_after(timeout):
                    await done.wait()
            finally:
                self._waiting.pop(key, None)
            return box[0] if box else None

        return wait

    def resolve(self, ack: FileAck) -> bool:
        """Wake whoever waits for this ack; False when nobody does (late or unknown)."""
        entry = self._waiting.get((ack.transferId, ack.stage, ack.chunkIndex if ack.stage == "chunk" else -1))
        if entry is None:
            return False
        done, box = entry
        box.append(ack)
        done.set()
        return True

    def __len__(self) -> int:
        return len(self._waiting)


Emit = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Outgoing:
    route: Route
    session_key: str
    name: str
    mime_type: str
    data: bytes


async def push_file(
    emit: Emit, waiters: AckWaiters, file: Outgoing, *, chunk_bytes: int, retries: int, ack_timeout: float
) -> str:
    """Send ``file`` in acknowledged chunks; returns the client's path for it."""
    transfer_id = str(uuid.uuid4())
    data = file.data
    total = max(1, -(-len(data) // chunk_bytes))
    await emit(
        event(
            "bncr.file.init",
            {
                "transferId": transfer_id,
                "direction": "oc2bncr",
                "sessionKey": file.session_key,
                "platform": file.route.platform,
                "groupId": file.route.group_id,
                "userId": file.route.user_id,
                "fileName": file.name,
                "mimeType": file.mime_type,
                "fileSize": len(data),
                "chunkSize": chunk_bytes,
                "totalChunks": total,
                "fileSha256": hashlib.sha256(data).hexdigest(),
                "ts": int(time.time() * 1000),
            },
        )
    )
    for index in range(total):
        piece = data[index * chunk_bytes : (index + 1) * chunk_bytes]
        frame = event(
            "bncr.file.chunk",
            {
                "transferId": transfer_id,
                "chunkIndex": index,
                "offset": index * chunk_bytes,
                "size": len(piece),
                "chunkSha256": hashlib.sha256(piece).hexdigest(),
                "base64": base64.b64encode(piece).decode("ascii"),
                "ts": int(time.time() * 1000),
            },
        )
        for attempt in range(1, retries + 1):
            wait = waiters.expect(transfer_id, "chunk", index)
            await emit(frame)
            ack = await wait(ack_timeout)
            if ack is not None and ack.ok:
                break
            if attempt == retries:
                why = "no ack" if ack is None else f"{ack.errorCode}: {ack.errorMessage}"
                await emit(event("bncr.file.abort", {"transferId": transfer_id, "reason": why}))
                raise TransferError(f"chunk {index} of {file.name} failed after {retries} tries ({why})")
    wait = waiters.expect(transfer_id, "complete")
    await emit(event("bncr.file.complete", {"transferId": transfer_id, "ts": int(time.time() * 1000)}))
    ack = await wait(ack_timeout)
    if ack is None or not ack.ok:
        raise TransferError(f"the client did not confirm {file.name}")
    return ack.path or file.name
