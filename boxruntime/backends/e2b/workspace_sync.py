"""Host directories of a session (``host_path`` and extra mounts) in an E2B sandbox: copied in
when the sandbox starts, and the writable ones copied back.

An E2B sandbox runs on another machine: nothing of this host can be mounted into it. So:

- **In, at start**: each mounted host tree (a directory, or one file) is packed into one tar
  (regular files and directories with their modes and times; symlinks and special files are
  left out, never followed), uploaded, and unpacked in the sandbox where the mount path lives
  (``paths.py``). Names ``__pycache__``, ``.venv`` and ``node_modules`` are left out (caches and
  platform-bound trees, as LangBot's backend does). Read-only mounts are then made read-only
  (``chmod -R a-w``; the sandbox user owns them, so this marks them rather than enforces it).
- **Back, after each command and at stop** (writable mounts only): the tree is listed in the
  sandbox and compared with what the last sync saw (size and modification time per file).
  Files that are new or changed there are downloaded and written here; files deleted there are
  deleted here, unless they changed here meanwhile (directories are made here, never removed
  here). Writes never follow a symlink on this host
  and never leave the mount's directory. A session without writable host mounts pays nothing.

Caps (both ways): at most ``MAX_FILES`` files and ``MAX_TOTAL_BYTES`` in a tree (over either,
the session is refused at start with a clear error, before any sandbox is made); a file over
``MAX_FILE_BYTES`` is not copied either way and is listed in the session's notes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import secrets
import stat
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from e2b import AsyncSandbox, FileType

from boxruntime.backends.e2b.errors import sandbox_error
from boxruntime.backends.e2b.paths import TMP, real_mount_path
from boxruntime.errors import BoxValidationError
from boxruntime.security import ResolvedMount

log = logging.getLogger(__name__)

MAX_FILES = 10_000
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 512 * 1024 * 1024
SKIPPED_NAMES = frozenset({"__pycache__", ".venv", "node_modules"})
LIST_DEPTH = 64

RunChecked = Callable[[list[str]], Awaitable[None]]
Seen = tuple[int, float]  # size, modification time (as the sandbox lists it)


@dataclass
class MountSync:
    """One host tree and its copy in the sandbox."""

    host: Path  # realpath
    real: str  # where it is in the sandbox
    writable: bool
    inner: tuple[str, ...] = ()  # paths (relative) of other mounts inside this one: not ours
    baseline: dict[str, Seen] = field(default_factory=dict)  # files as the last sync saw them
    host_seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # size, mtime_ns here
    left_out: set[str] = field(default_factory=set)  # never copied (too big, or no way to write it here)
    disabled: str | None = None  # why it is no longer copied back

    def ours(self, relative: str) -> bool:
        parts = relative.split("/")
        if any(part in SKIPPED_NAMES for part in parts):
            return False
        return not any(relative == inner or relative.startswith(inner + "/") for inner in self.inner)


def plan(workspace: ResolvedMount | None, extras: list[ResolvedMount]) -> list[MountSync]:
    """The trees of a session, workspace first (extra mounts inside it are theirs, not its)."""
    mounts = [m for m in (workspace, *extras) if m is not None]
    synced = [MountSync(Path(m.host_path), real_mount_path(m.mount_path), not m.read_only) for m in mounts]
    nest(synced)
    return synced


def nest(synced: list[MountSync]) -> None:
    """Tell each tree which others lie inside it (their files are theirs)."""
    for sync in synced:
        sync.inner = tuple(
            posixpath.relpath(other.real, sync.real)
            for other in synced
            if other is not sync and other.real.startswith(sync.real.rstrip("/") + "/")
        )
        # Files a tree saw where a mount now lies are that mount's: not "deleted" from this tree.
        sync.baseline = {rel: seen for rel, seen in sync.baseline.items() if sync.ours(rel)}


# ── in ───────────────────────────────────────────────────────────────────


@dataclass
class Packed:
    archive: Path
    files: int
    total: int
    notes: list[str]


def _walk(sync: MountSync) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry of the tree (relative path, lstat), never through a symlink."""
    top = sync.host
    info = os.lstat(top)
    if not stat.S_ISDIR(info.st_mode):
        yield "", info
        return
    yield "", info
    for directory, dirs, files in os.walk(top, followlinks=False):
        base = os.path.relpath(directory, top)
        for name in sorted(dirs + files):
            relative = name if base == "." else f"{base}/{name}"
            if sync.ours(relative):
                yield relative, os.lstat(os.path.join(directory, name))
        dirs[:] = [d for d in dirs if d not in SKIPPED_NAMES]


def pack(mounts: list[MountSync]) -> Packed:
    """One tar of every tree (member names are sandbox paths without the leading /). Blocking:
    run it in a thread. BoxValidationError when a tree is over the caps."""
    handle, name = tempfile.mkstemp(prefix="boxruntime-e2b-", suffix=".tar")
    os.close(handle)
    archive = Path(name)
    files = total = 0
    notes: list[str] = []
    try:
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            for sync in mounts:
                for relative, info in _walk(sync):
                    source = sync.host / relative if relative else sync.host
                    member = (sync.real + ("/" + relative if relative else "")).lstrip("/")
                    if stat.S_ISLNK(info.st_mode) or not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                        notes.append(f"{source} is not copied to E2B: only regular files and directories are")
                        continue
                    if stat.S_ISREG(info.st_mode):
                        if info.st_size > MAX_FILE_BYTES:
                            sync.left_out.add(relative)
                            notes.append(f"{source} is not copied to E2B: over {MAX_FILE_BYTES >> 20} MiB")
                            continue
                        files += 1
                        total += info.st_size
                        if files > MAX_FILES or total > MAX_TOTAL_BYTES:
                            raise BoxValidationError(
                                f"host mount {sync.host} is too big for the e2b backend: it is copied into the "
                                f"sandbox, at most {MAX_FILES} files and {MAX_TOTAL_BYTES >> 20} MiB per session "
                                "(mount a smaller directory)"
                            )
                        sync.host_seen[relative] = (info.st_size, info.st_mtime_ns)
                    entry = tar.gettarinfo(str(source), arcname=member)
                    entry.uid = entry.gid = 0
                    entry.uname = entry.gname = ""
                    if entry.isreg():  # opened without following a symlink swapped in since the walk
                        with os.fdopen(os.open(source, os.O_RDONLY | os.O_NOFOLLOW), "rb") as data:
                            tar.addfile(entry, data)
                    else:
                        tar.addfile(entry)
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    return Packed(archive, files, total, notes)


async def upload(sandbox: AsyncSandbox, mounts: list[MountSync], run: RunChecked) -> list[str]:
    """Copy the trees into the sandbox; the notes to keep about what was left out."""
    if not mounts:
        return []
    packed = await anyio.to_thread.run_sync(pack, mounts)
    remote = f"{TMP}/.boxruntime-upload-{secrets.token_hex(6)}.tar"
    try:
        with packed.archive.open("rb") as data:
            await sandbox.files.write(remote, data)
    except Exception as exc:
        raise sandbox_error(exc, "copying the host mounts into the E2B sandbox") from None
    finally:
        packed.archive.unlink(missing_ok=True)
    await run(["tar", "-x", "--no-same-owner", "-f", remote, "-C", "/"])
    await run(["rm", "-f", remote])
    read_only = [m.real for m in mounts if not m.writable]
    if read_only:
        await run(["chmod", "-R", "a-w", *read_only])
    for sync in mounts:
        if sync.writable:
            await _baseline(sandbox, sync)
    log.info("e2b: copied %d files (%d bytes) of %d host mounts in", packed.files, packed.total, len(mounts))
    return packed.notes


async def _listing(sandbox: AsyncSandbox, sync: MountSync) -> dict[str, Any] | None:
    """The tree as the sandbox has it now (relative path → entry); None if it cannot be listed."""
    try:
        entries = await sandbox.files.list(sync.real, depth=LIST_DEPTH)
    except Exception as exc:
        sync.disabled = f"{sync.host} is no longer copied back: listing it in the sandbox failed ({exc})"
        log.warning("e2b: %s", sync.disabled)
        return None
    found = {}
    for entry in entries:
        relative = posixpath.relpath(entry.path, sync.real)
        if sync.ours(relative):
            found[relative] = entry
    return found


async def _baseline(sandbox: AsyncSandbox, sync: MountSync) -> None:
    listed = await _listing(sandbox, sync)
    if listed is not None:
        sync.baseline = {rel: _seen(e) for rel, e in listed.items() if e.type == FileType.FILE}


def _seen(entry: Any) -> Seen:
    return int(entry.size), float(entry.modified_time.timestamp())


# ── back ─────────────────────────────────────────────────────────────────


async def download(sandbox: AsyncSandbox, sync: MountSync) -> None:
    """Bring the sandbox's changes to a writable tree back here (see the module's words)."""
    if not sync.writable or sync.disabled is not None or not sync.host.is_dir():
        return
    listed = await _listing(sandbox, sync)
    if listed is None:
        return
    files = {rel: e for rel, e in listed.items() if e.type == FileType.FILE}
    moved = 0
    for relative, entry in sorted(files.items()):
        seen = _seen(entry)
        if sync.baseline.get(relative) == seen or relative in sync.left_out:
            continue
        if seen[0] > MAX_FILE_BYTES:
            sync.left_out.add(relative)
            log.warning("e2b: %s/%s is not copied back: over %d MiB", sync.host, relative, MAX_FILE_BYTES >> 20)
            continue
        if moved + seen[0] > MAX_TOTAL_BYTES:
            log.warning("e2b: copying %s back stopped at %d MiB; the rest follows next time", sync.host, moved >> 20)
            break
        try:
            data = bytes(await sandbox.files.read(f"{sync.real}/{relative}", format="bytes"))
        except Exception as exc:
            log.warning("e2b: %s/%s is not copied back: %s", sync.host, relative, exc)
            continue
        moved += len(data)
        try:
            sync.host_seen[relative] = await anyio.to_thread.run_sync(
                _write_here, sync.host, relative, data, entry.mode
            )
        except OSError as exc:  # a symlink or a file where the path needs a directory: never through it
            log.warning("e2b: %s/%s is not copied back: %s", sync.host, relative, exc)
            sync.left_out.add(relative)
            continue
        sync.baseline[relative] = seen
    for relative in sorted(set(sync.baseline) - set(files), reverse=True):
        await anyio.to_thread.run_sync(_delete_here, sync, relative)
        sync.baseline.pop(relative, None)
    dirs = [rel for rel, e in listed.items() if e.type == FileType.DIR]
    await anyio.to_thread.run_sync(_make_dirs_here, sync.host, dirs)


def _open_dir(root: Path, parts: list[str], create: bool) -> int:
    """A descriptor of ``root/parts`` reached without following any symlink (OSError if one is
    in the way, or a part is missing and ``create`` is False)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    owner = os.fstat(fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if os.geteuid() == 0:  # as the mount's owner, like the files the sandbox made
                        os.chown(part, owner.st_uid, owner.st_gid, dir_fd=fd, follow_symlinks=False)
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_here(root: Path, relative: str, data: bytes, mode: int) -> tuple[int, int]:
    parts = relative.split("/")
    directory = _open_dir(root, parts[:-1], create=True)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(parts[-1], flags, 0o644, dir_fd=directory)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o755 if mode & 0o111 else 0o644)
            if os.geteuid() == 0:
                owner = os.stat(root)
                os.fchown(fd, owner.st_uid, owner.st_gid)
            done = os.fstat(fd)
        finally:
            os.close(fd)
    finally:
        os.close(directory)
    return done.st_size, done.st_mtime_ns


def _delete_here(sync: MountSync, relative: str) -> None:
    parts = relative.split("/")
    try:
        directory = _open_dir(sync.host, parts[:-1], create=False)
    except OSError:
        return  # gone here too
    try:
        now = os.lstat(parts[-1], dir_fd=directory)
        if not stat.S_ISREG(now.st_mode) or sync.host_seen.get(relative) != (now.st_size, now.st_mtime_ns):
            log.info("e2b: %s/%s was deleted in the sandbox but changed here: kept", sync.host, relative)
            return
        os.unlink(parts[-1], dir_fd=directory)
        sync.host_seen.pop(relative, None)
    except FileNotFoundError:
        pass
    finally:
        os.close(directory)


def _make_dirs_here(root: Path, dirs: list[str]) -> None:
    for relative in dirs:
        with contextlib.suppress(OSError):
            os.close(_open_dir(root, relative.split("/"), create=True))
