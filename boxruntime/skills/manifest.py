"""A package's manifest: every file with its size, mode and sha256, and one digest over them.

The digest names a revision: ``sha256:<hex>`` of the records ``<path>\\0<size>\\0<mode>\\0<sha256>\\n``
sorted by path (POSIX separators, relative to the package root; mode is 755 or 644). Empty
directories do not change it; renaming, editing or chmod +x of any file does.

Building one refuses what a skill package must not contain: symlinks (a link to /etc/passwd
would be read or mounted as if it were package content), devices, FIFOs and sockets; and stops
at the size limits instead of walking or hashing an arbitrarily large tree.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from boxruntime.errors import BoxValidationError
from boxruntime.skills.fileio import READ_CHUNK, executable_mode

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ManifestLimits:
    # LangBot 0.7 caps a revision at 2048 files and 256 MiB; directories count as entries here.
    max_entries: int = 4096
    max_bytes: int = 256 * MiB


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    path: str
    size: int
    mode: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    files: tuple[ManifestEntry, ...]
    directories: tuple[str, ...]
    digest: str

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)


class HashCache:
    """sha256 of files already hashed, keyed by what changes when a file does (inode, size,
    mtime, ctime): listing skills then re-reads only files that were modified."""

    def __init__(self, max_items: int = 65_536) -> None:
        self._items: dict[tuple[int, ...], str] = {}
        self._max_items = max_items

    @staticmethod
    def key(info: os.stat_result) -> tuple[int, ...]:
        return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    def get(self, info: os.stat_result) -> str | None:
        return self._items.get(self.key(info))

    def put(self, info: os.stat_result, sha256: str) -> None:
        if len(self._items) >= self._max_items:
            self._items.clear()
        self._items[self.key(info)] = sha256


_KINDS = {
    stat.S_IFLNK: "a symlink",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def kind_of(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def build_manifest(root: Path, limits: ManifestLimits | None = None, cache: HashCache | None = None) -> Manifest:
    limits = limits or ManifestLimits()
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode):
        raise BoxValidationError(f"{root} is {kind_of(info.st_mode)}, not a directory")
    files: list[ManifestEntry] = []
    directories: list[str] = []
    total = 0
    for rel, entry_info in _walk(root, limits):
        if stat.S_ISDIR(entry_info.st_mode):
            directories.append(rel)
            continue
        total += entry_info.st_size
        if total > limits.max_bytes:
            raise BoxValidationError(f"skill package {root} is larger than {limits.max_bytes // MiB} MiB")
        sha = cache.get(entry_info) if cache is not None else None
        if sha is None:
            sha = _sha256(root / rel, entry_info)
            if cache is not None:
                cache.put(entry_info, sha)
        files.append(ManifestEntry(rel, entry_info.st_size, executable_mode(entry_info.st_mode), sha))
    files.sort(key=lambda entry: entry.path)
    directories.sort()
    return Manifest(tuple(files), tuple(directories), digest_of(files))


def digest_of(files: list[ManifestEntry]) -> str:
    outer = hashlib.sha256()
    for entry in sorted(files, key=lambda item: item.path):
        record = f"{entry.path}\0{entry.size}\0{entry.mode:o}\0{entry.sha256}\n"
        outer.update(record.encode("utf-8", "surrogateescape"))
    return f"sha256:{outer.hexdigest()}"


def _walk(root: Path, limits: ManifestLimits) -> Iterator[tuple[str, os.stat_result]]:
    """Every directory and regular file under ``root`` as (relative path, lstat), links never
    followed; anything else is refused."""
    pending = [""]
    seen = 0
    while pending:
        rel_dir = pending.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as entries:
            for entry in entries:
                seen += 1
                if seen > limits.max_entries:
                    raise BoxValidationError(f"skill package {root} has more than {limits.max_entries} entries")
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    pending.append(rel)
                elif not stat.S_ISREG(info.st_mode):
                    raise BoxValidationError(
                        f"skill package file {rel} is {kind_of(info.st_mode)}; only regular files are allowed"
                    )
                yield rel, info


def _sha256(path: Path, expected: os.stat_result) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if HashCache.key(os.fstat(handle.fileno())) != HashCache.key(expected):
            raise BoxValidationError(f"{path} changed while the package was being read")
        size = 0
        while chunk := handle.read(READ_CHUNK):
            size += len(chunk)
            digest.update(chunk)
    if size != expected.st_size:
        raise BoxValidationError(f"{path} changed while the package was being read")
    return digest.hexdigest()
