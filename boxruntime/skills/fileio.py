"""File access for the skill store that never follows a link out of a package.

Every helper works on paths the caller has already confined (realpath inside the package);
these add the checks that must happen at open time: no symlink as the last component, regular
files only, sizes capped, writes atomic.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from boxruntime.errors import BoxValidationError

READ_CHUNK = 64 * 1024
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def is_inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_inside(root: str, relative: str) -> tuple[str, str]:
    """The realpath of ``relative`` under ``root`` and the normalised relative path.

    ``root`` must already be a realpath. Absolute paths, ``..`` and anything that resolves
    (through a symlink) outside ``root`` are refused.
    """
    rel = str(relative or ".").strip() or "."
    if "\0" in rel:
        raise BoxValidationError("path must not contain NUL bytes")
    if os.path.isabs(rel):
        raise BoxValidationError("path must be relative to the skill package root")
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        raise BoxValidationError("path must stay within the skill package root")
    target = os.path.realpath(os.path.join(root, norm))
    if not is_inside(target, root):
        raise BoxValidationError("path must stay within the skill package root")
    return target, norm


def executable_mode(mode: int) -> int:
    """The permissions a file gets in a package: 0o755 if anyone could execute it, else 0o644.
    Set-id and sticky bits never survive."""
    return 0o755 if mode & 0o111 else 0o644


def read_regular_file(path: str | Path, max_bytes: int, what: str) -> bytes:
    """The bytes of a regular file that is not a symlink, at most ``max_bytes`` of them."""
    try:
        fd = os.open(path, _OPEN_READ)
    except OSError as exc:
        raise BoxValidationError(f"{what} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BoxValidationError(f"{what} is not a regular file")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BoxValidationError(f"{what} is larger than {max_bytes} bytes")
    return data


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` in one rename: readers see the old or the new file, never
    half of one, and a symlink at ``path`` is replaced rather than written through."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".boxruntime-write-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def copy_regular_file(src: Path, dst: Path, expected_size: int, mode: int) -> None:
    """Copy one file (no symlink followed) to a new ``dst``; refuse if it changed size meanwhile."""
    try:
        fd = os.open(src, _OPEN_READ)
    except OSError as exc:
        raise BoxValidationError(f"{src} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise BoxValidationError(f"{src} is not a regular file")
        out_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        copied = 0
        with os.fdopen(out_fd, "wb") as out:
            while chunk := source.read(READ_CHUNK):
                copied += len(chunk)
                if copied > expected_size:
                    break
                out.write(chunk)
    if copied != expected_size:
        raise BoxValidationError(f"{src} changed while it was being copied")
