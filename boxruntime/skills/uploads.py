"""``__file_chunk``: files uploaded in base64 chunks, staged until one action consumes them.

LangBot 0.5 appended each chunk to ``<storage dir>/<file_key>`` unchecked (path traversal, no
size limit, files kept forever; reference §A.7, §G.11). Here, as in LangBot 0.7: keys must match
``FILE_KEY_PATTERN``; chunks arrive in order, each at most 16 KiB decoded; a file is at most
20 MiB; files sit in a private directory under names derived from the key, are deleted when an
action consumes them, and expire when left alone.

All methods run on the event loop thread (each chunk is one small write), so no lock is needed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from boxruntime.errors import BoxCapacityExceededError, BoxValidationError
from boxruntime.models import ChunkReceipt, FileChunk, check_file_key

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
STAGED_SUFFIX = ".upload"


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_chunk_bytes: int = 16 * KiB
    max_file_bytes: int = 20 * MiB
    # All uploads staged at once; bounds the disk a client can fill by never consuming.
    max_staged_bytes: int = 256 * MiB
    ttl_sec: float = 600.0


@dataclass(slots=True)
class _Upload:
    key: str
    path: Path
    file_length: int | None
    chunk_amount: int
    touched: float
    next_index: int = 0
    received: int = 0
    complete: bool = field(default=False)


class UploadStore:
    def __init__(
        self,
        directory: Path,
        limits: UploadLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.limits = limits or UploadLimits()
        self._clock = clock
        self._uploads: dict[str, _Upload] = {}
        # Files handed to a consumer: expiry must not delete them under its feet.
        self._in_use: set[Path] = set()

    @property
    def pending(self) -> int:
        return len(self._uploads)

    def accept(self, chunk: FileChunk) -> ChunkReceipt:
        upload = self._uploads.get(chunk.file_key)
        if chunk.chunk_index == 0:
            if upload is not None:
                raise BoxValidationError(
                    f"upload {chunk.file_key!r} already exists; send the file under a new file_key"
                )
            upload = self._begin(chunk)
        elif upload is None:
            raise BoxValidationError(
                f"no upload {chunk.file_key!r} in progress: chunk 0 must come first (or the upload expired)"
            )
        try:
            self._append(upload, chunk)
        except BoxValidationError:
            # A broken upload cannot be resumed; drop it now rather than at expiry.
            self._discard(upload)
            raise
        return ChunkReceipt(received_bytes=upload.received, complete=upload.complete)

    @contextlib.contextmanager
    def consume(self, file_key: str) -> Iterator[Path]:
        """The staged file of a complete upload, deleted when the block ends (whatever happens)."""
        try:
            check_file_key(file_key)
        except ValueError as exc:
            raise BoxValidationError(str(exc)) from None
        upload = self._uploads.pop(file_key, None)
        if upload is None:
            raise BoxValidationError(
                f"no uploaded file {file_key!r}: send it with __file_chunk first "
                f"(an upload can be used once and expires after {self.limits.ttl_sec:g} s)"
            )
        self._in_use.add(upload.path)
        try:
            if not upload.complete:
                raise BoxValidationError(
                    f"upload {file_key!r} is incomplete ({upload.next_index} of {upload.chunk_amount} chunks)"
                )
            yield upload.path
        finally:
            self._in_use.discard(upload.path)
            _unlink(upload.path)

    def expire(self) -> int:
        """Drop uploads idle for longer than the TTL, and staged files nobody knows about (left by
        an earlier run); returns how many were removed."""
        now = self._clock()
        stale = [u for u in self._uploads.values() if now - u.touched > self.limits.ttl_sec]
        for upload in stale:
            log.info("upload %s expired after %.0f s idle", upload.key, now - upload.touched)
            self._discard(upload)
        return len(stale) + self._sweep_orphans()

    # ── internals ────────────────────────────────────────────────────────

    def _begin(self, chunk: FileChunk) -> _Upload:
        limits = self.limits
        max_chunks = max(1, math.ceil(limits.max_file_bytes / limits.max_chunk_bytes))
        if chunk.chunk_amount > max_chunks:
            raise BoxValidationError(
                f"chunk_amount {chunk.chunk_amount} exceeds {max_chunks}: files are limited to "
                f"{limits.max_file_bytes // MiB} MiB in chunks of {limits.max_chunk_bytes // KiB} KiB"
            )
        if chunk.file_length is not None and not 0 <= chunk.file_length <= limits.max_file_bytes:
            raise BoxValidationError(
                f"file_length {chunk.file_length} is outside 0..{limits.max_file_bytes} "
                f"(uploads are limited to {limits.max_file_bytes // MiB} MiB)"
            )
        announced = chunk.file_length if chunk.file_length is not None else limits.max_file_bytes
        if self._staged_bytes() + announced > limits.max_staged_bytes:
            raise BoxCapacityExceededError(
                f"too many uploads waiting to be used ({limits.max_staged_bytes // MiB} MiB staged); "
                "use or let them expire first"
            )
        path = self._dir() / f"{hashlib.sha256(chunk.file_key.encode()).hexdigest()[:40]}{STAGED_SUFFIX}"
        # Not registered, so a file under this name is a leftover of an earlier run.
        _unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.close(fd)
        upload = _Upload(chunk.file_key, path, chunk.file_length, chunk.chunk_amount, self._clock())
        self._uploads[chunk.file_key] = upload
        return upload

    def _append(self, upload: _Upload, chunk: FileChunk) -> None:
        if chunk.chunk_amount != upload.chunk_amount or chunk.file_length != upload.file_length:
            raise BoxValidationError(
                f"chunk {chunk.chunk_index} of {upload.key!r} disagrees on file_length/chunk_amount"
            )
        if chunk.chunk_index != upload.next_index:
            raise BoxValidationError(
                f"chunk {chunk.chunk_index} of {upload.key!r} arrived out of order (expected {upload.next_index})"
            )
        data = self._decode(chunk)
        limit = upload.file_length if upload.file_length is not None else self.limits.max_file_bytes
        if upload.received + len(data) > limit:
            raise BoxValidationError(f"upload {upload.key!r} is longer than {limit} bytes")
        fd = os.open(upload.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        upload.received += len(data)
        upload.next_index += 1
        upload.touched = self._clock()
        if upload.next_index == upload.chunk_amount:
            if upload.file_length is not None and upload.received != upload.file_length:
                raise BoxValidationError(
                    f"upload {upload.key!r} ended at {upload.received} bytes; file_length said {upload.file_length}"
                )
            upload.complete = True

    def _decode(self, chunk: FileChunk) -> bytes:
        max_chunk = self.limits.max_chunk_bytes
        # Refuse before decoding: base64 of max_chunk bytes is at most this long.
        if len(chunk.chunk_base64) > 4 * math.ceil(max_chunk / 3):
            raise BoxValidationError(f"chunk {chunk.chunk_index} is larger than {max_chunk} bytes")
        try:
            data = base64.b64decode(chunk.chunk_base64, validate=True)
        except (binascii.Error, ValueError):
            raise BoxValidationError(f"chunk {chunk.chunk_index} is not valid base64") from None
        if len(data) > max_chunk:
            raise BoxValidationError(f"chunk {chunk.chunk_index} is larger than {max_chunk} bytes")
        if chunk.chunk_size is not None and chunk.chunk_size != len(data):
            raise BoxValidationError(
                f"chunk {chunk.chunk_index} is {len(data)} bytes; chunk_size said {chunk.chunk_size}"
            )
        return data

    def _staged_bytes(self) -> int:
        return sum(u.file_length if u.file_length is not None else u.received for u in self._uploads.values())

    def _discard(self, upload: _Upload) -> None:
        if self._uploads.get(upload.key) is upload:
            del self._uploads[upload.key]
        _unlink(upload.path)

    def _dir(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = os.lstat(self.directory)
        if not stat.S_ISDIR(info.st_mode):
            raise BoxValidationError(f"upload directory {self.directory} is not a directory")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)
        return self.directory

    def _sweep_orphans(self) -> int:
        if not self.directory.is_dir():
            return 0
        known = {u.path for u in self._uploads.values()} | self._in_use
        cutoff = time.time() - self.limits.ttl_sec
        removed = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                path = Path(entry.path)
                if not entry.name.endswith(STAGED_SUFFIX) or path in known:
                    continue
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    _unlink(path)
                    removed += 1
        return removed


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
