"""Safe extraction of an uploaded skill zip.

LangBot 0.5 ran ``extractall`` on whatever it was sent: symlink members, zip bombs and
thousands of entries went straight to disk (reference §D.14). Here an archive is checked in
three passes, each of which alone keeps the caps:

1. the end-of-central-directory record, before ``zipfile`` builds an object per entry;
2. every central-directory entry, before anything is written: names, types, sizes, ratio,
   duplicates, overlapping data;
3. the extraction itself, which counts the bytes it really writes, so a header that lies about
   a size cannot get past the caps.

Members are written with ``O_EXCL | O_NOFOLLOW`` into a fresh directory, as regular files
(0o644, or 0o755 when the archive marks them executable) and directories, nothing else.
"""

from __future__ import annotations

import lzma
import os
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from boxruntime.errors import BoxValidationError
from boxruntime.skills.fileio import READ_CHUNK, executable_mode
from boxruntime.skills.manifest import kind_of
from boxruntime.skills.names import MAX_COMPONENT_BYTES

MiB = 1024 * 1024
# Below this size an entry cannot be a meaningful bomb, and tiny files (a few hundred bytes of
# spaces) compress far beyond 100:1 legitimately.
RATIO_FLOOR = 64 * 1024
# A central-directory record is 46 bytes plus name, extra field and comment; real archives stay
# far below this per entry, so a larger directory is an attempt to exhaust memory.
MAX_CD_BYTES_PER_ENTRY = 4096
# A local file header is at least this long; used to tell entries whose data overlap.
LOCAL_HEADER_BYTES = 30
SUPPORTED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_DRIVE = re.compile(r"^[A-Za-z]:")
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


@dataclass(frozen=True, slots=True)
class ZipLimits:
    max_archive_bytes: int = 20 * MiB
    max_entries: int = 512
    max_entry_bytes: int = 16 * MiB
    max_total_bytes: int = 64 * MiB
    max_ratio: int = 100


@dataclass(frozen=True, slots=True)
class ZipMember:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool
    mode: int


def extract_zip(archive: Path, dest: Path, limits: ZipLimits | None = None) -> list[ZipMember]:
    """Check ``archive`` and extract it into ``dest``, which must not exist yet."""
    limits = limits or ZipLimits()
    size = os.stat(archive).st_size
    if size == 0:
        raise BoxValidationError("Uploaded file is empty")
    if size > limits.max_archive_bytes:
        raise BoxValidationError(f"Uploaded zip is {size} bytes; the limit is {limits.max_archive_bytes // MiB} MiB")
    with open(archive, "rb") as handle:
        check_end_record(handle, size, limits)
        with _open_zip(handle) as zf:
            members = inspect_members(zf.infolist(), size, limits)
            extract_members(zf, members, dest, limits)
    return members


def check_end_record(handle: BinaryIO, size: int, limits: ZipLimits) -> None:
    """Pass 1: the entry count and central-directory size the archive declares."""
    tail_len = min(size, _EOCD.size + 0xFFFF)
    handle.seek(size - tail_len)
    tail = handle.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + _EOCD.size > len(tail):
        raise BoxValidationError("Uploaded file must be a valid .zip archive")
    _, _, _, _, entries, cd_size, _, _ = _EOCD.unpack_from(tail, pos)
    if (entries == 0xFFFF or cd_size == 0xFFFFFFFF) and pos >= _ZIP64_LOCATOR.size:
        sig, _, z64_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, pos - _ZIP64_LOCATOR.size)
        if sig == b"PK\x06\x07" and z64_offset + _ZIP64_EOCD.size <= size:
            handle.seek(z64_offset)
            record = handle.read(_ZIP64_EOCD.size)
            if record[:4] == b"PK\x06\x06":
                fields = _ZIP64_EOCD.unpack(record)
                entries, cd_size = fields[7], fields[8]
    if entries > limits.max_entries:
        raise BoxValidationError(f"Uploaded zip has {entries} entries; the limit is {limits.max_entries}")
    if cd_size > limits.max_entries * MAX_CD_BYTES_PER_ENTRY:
        raise BoxValidationError(f"Uploaded zip's central directory is {cd_size} bytes, too large for its entry limit")


def _open_zip(handle: BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise BoxValidationError(f"Uploaded file must be a valid .zip archive ({exc})") from None


def inspect_members(infos: list[zipfile.ZipInfo], archive_size: int, limits: ZipLimits) -> list[ZipMember]:
    """Pass 2: every entry as the central directory describes it, before anything is written."""
    if len(infos) > limits.max_entries:
        raise BoxValidationError(f"Uploaded zip has {len(infos)} entries; the limit is {limits.max_entries}")
    members = [_member(info, limits) for info in infos]
    total = sum(m.info.file_size for m in members)
    if total > limits.max_total_bytes:
        raise BoxValidationError(
            f"Uploaded zip expands to {total} bytes; the limit is {limits.max_total_bytes // MiB} MiB"
        )
    compressed = sum(m.info.compress_size for m in members)
    if total > RATIO_FLOOR and total > limits.max_ratio * max(compressed, 1):
        raise BoxValidationError(f"Uploaded zip's compression ratio exceeds {limits.max_ratio}:1 (a zip bomb?)")
    _check_layout(members)
    _check_no_overlap(infos, archive_size)
    return members


def _member(info: zipfile.ZipInfo, limits: ZipLimits) -> ZipMember:
    name = info.filename
    mode = (info.external_attr >> 16) & 0xFFFF
    kind = stat.S_IFMT(mode)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise BoxValidationError(f"Archive member {name!r} is {kind_of(mode)}; only files and directories are allowed")
    if info.flag_bits & 0x1:
        raise BoxValidationError(f"Archive member {name!r} is encrypted")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        raise BoxValidationError(f"Archive member {name!r} uses unsupported compression {info.compress_type}")
    is_dir = name.endswith("/") or kind == stat.S_IFDIR
    parts = _safe_parts(name)
    if is_dir and info.file_size:
        raise BoxValidationError(f"Archive member {name!r} is a directory with content")
    if info.file_size > limits.max_entry_bytes:
        raise BoxValidationError(
            f"Archive member {name!r} is {info.file_size} bytes; the limit is {limits.max_entry_bytes // MiB} MiB"
        )
    if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise BoxValidationError(
            f"Archive member {name!r} compresses more than {limits.max_ratio}:1 "
            f"({info.compress_size} -> {info.file_size} bytes; a zip bomb?)"
        )
    return ZipMember(info, parts, is_dir, executable_mode(mode))


def _safe_parts(name: str) -> tuple[str, ...]:
    unsafe = BoxValidationError(f"Archive contains an unsafe path: {name!r}")
    if not name or "\\" in name or "\0" in name or name.startswith("/") or _DRIVE.match(name):
        raise unsafe
    parts = tuple(name[:-1].split("/") if name.endswith("/") else name.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise unsafe
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            raise BoxValidationError(f"Archive member {name[:60]!r}... has a name component over 255 bytes")
    return parts


def _check_layout(members: list[ZipMember]) -> None:
    """No two entries for one path, and no path that is a file and a directory at once."""
    seen: set[tuple[str, ...]] = set()
    files: set[tuple[str, ...]] = set()
    parents: set[tuple[str, ...]] = set()
    for member in members:
        if member.parts in seen:
            raise BoxValidationError(f"Archive contains a duplicate entry: {'/'.join(member.parts)!r}")
        seen.add(member.parts)
        (parents if member.is_dir else files).add(member.parts)
        parents.update(member.parts[:i] for i in range(1, len(member.parts)))
    clash = files & parents
    if clash:
        raise BoxValidationError(f"Archive path {'/'.join(min(clash))!r} is both a file and a directory")


def _check_no_overlap(infos: list[zipfile.ZipInfo], archive_size: int) -> None:
    """Entries whose data share bytes are the trick behind non-recursive zip bombs."""
    ordered = sorted(infos, key=lambda info: info.header_offset)
    for current, following in zip(ordered, [*ordered[1:], None], strict=True):
        end = current.header_offset + LOCAL_HEADER_BYTES + current.compress_size
        limit = following.header_offset if following is not None else archive_size
        if end > limit:
            raise BoxValidationError(f"Archive member {current.filename!r} overlaps other data (a crafted zip?)")


def extract_members(zf: zipfile.ZipFile, members: list[ZipMember], dest: Path, limits: ZipLimits) -> None:
    """Pass 3: write the members, counting real bytes against the caps as they stream."""
    os.mkdir(dest, 0o755)
    budget = _Budget(limits)
    for member in members:
        if member.is_dir:
            _make_dirs(dest, member.parts)
            continue
        _make_dirs(dest, member.parts[:-1])
        target = dest.joinpath(*member.parts)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(target, flags, member.mode), "wb") as out:
            _copy_member(zf, member, out, budget)


class _Budget:
    def __init__(self, limits: ZipLimits) -> None:
        self.limits = limits
        self.total = 0

    def charge(self, member: ZipMember, written: int, chunk: int) -> None:
        self.total += chunk
        name = "/".join(member.parts)
        if written > member.info.file_size:
            raise BoxValidationError(f"Archive member {name!r} is larger than its header declares")
        if written > self.limits.max_entry_bytes:
            raise BoxValidationError(f"Archive member {name!r} exceeds {self.limits.max_entry_bytes // MiB} MiB")
        if self.total > self.limits.max_total_bytes:
            raise BoxValidationError(f"Uploaded zip expands beyond {self.limits.max_total_bytes // MiB} MiB")


def _copy_member(zf: zipfile.ZipFile, member: ZipMember, out: BinaryIO, budget: _Budget) -> None:
    written = 0
    try:
        with zf.open(member.info) as source:
            while chunk := source.read(READ_CHUNK):
                written += len(chunk)
                budget.charge(member, written, len(chunk))
                out.write(chunk)
    except BoxValidationError:
        raise
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, ValueError, NotImplementedError) as exc:
        raise BoxValidationError(f"Archive member {'/'.join(member.parts)!r} is corrupt: {exc}") from None
    if written != member.info.file_size:
        raise BoxValidationError(f"Archive member {'/'.join(member.parts)!r} is shorter than its header declares")


def _make_dirs(dest: Path, parts: tuple[str, ...]) -> None:
    current = dest
    for part in parts:
        current = current / part
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise BoxValidationError(f"Archive path {current.relative_to(dest)} is not a directory") from None
