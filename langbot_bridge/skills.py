"""Skills from the client side: packages from a local directory, audited changes, mounts.

- ``zip_directory`` packs a skill directory in memory as the daemon's zip install takes it:
  regular files and directories only (a symlink is refused, with where it points, rather than
  followed or dropped), without ``.git``, ``__pycache__``, ``.venv`` and ``node_modules``.
- ``SkillService`` is what a bot or the CLI calls to change skills: every change (create,
  update, delete, install, file write) goes through ``BoxClient`` and, when an ``AuditLog`` is
  given, is appended to it as a ``skill_change`` line, failures included.
- ``skill_mounts`` turns skill names into the read-only mounts at ``<workspace>/.skills/<name>``
  that make them visible in a session; ``skill_files`` lists a whole package.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import zipfile
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import TypeVar

import anyio

from boxruntime.errors import BoxError, BoxValidationError
from boxruntime.models import (
    DEFAULT_MOUNT_PATH,
    MAX_LISTED_ENTRIES,
    HostMountMode,
    MountSpec,
    Skill,
    SkillFields,
    SkillFileEntry,
    SkillFileWritten,
    SkillUpdate,
)
from langbot_bridge.audit import AuditEntry, AuditLog
from langbot_bridge.client import BoxClient

T = TypeVar("T")

# What a package never needs and a developer's checkout often has (LangBot 0.7 skips the same).
SKIPPED_DIRS = frozenset({".git", "__pycache__", ".venv", "node_modules"})
SKILLS_DIR_NAME = ".skills"  # skills appear in a session at <workspace>/.skills/<name>
# The daemon's defaults: a package has at most 4096 entries, a zip expands to at most 64 MiB.
# Checked here too only to stop early, before a wrong directory is read into memory.
MAX_PACKAGE_ENTRIES = 4096
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
# The daemon refuses a member that expands more than 100:1 as a zip bomb; a file that
# compresses that well (zeros, repeated logs) is stored uncompressed instead, with margin.
_STORE_ABOVE_RATIO = 50
# Fixed member times: the same directory always packs to the same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# ── packing a directory ──────────────────────────────────────────────────


def zip_directory(directory: Path) -> bytes:
    """``directory`` as a zip with one top-level folder (its name), ready for ``install_skill_zip``.

    Raises ``BoxValidationError`` for a symlink, device, FIFO or socket inside it, and for a
    tree larger than a skill zip may be (so a mistyped ``~`` is not read into memory).
    """
    root = Path(os.path.realpath(directory))
    if not root.is_dir():
        raise BoxValidationError(f"{directory} is not a directory")
    top = PurePosixPath(root.name or "skill")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for relative, is_dir in _package_entries(root, Path(directory)):
            if is_dir:
                archive.writestr(_member(f"{top / relative}/", stat.S_IFDIR | 0o755), b"")
                continue
            data, mode = _read_regular(root / relative)
            info = _member(str(top / relative), stat.S_IFREG | mode)
            info.compress_type = zipfile.ZIP_STORED if _compresses_like_a_bomb(data) else zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def _package_entries(root: Path, shown: Path) -> list[tuple[str, bool]]:
    """(relative POSIX path, is_dir) of every file and of every directory left empty, sorted."""
    entries: list[tuple[str, bool]] = []
    pending = [""]
    seen = total_bytes = 0
    while pending:
        current = pending.pop()
        with os.scandir(root / current) as scanned:
            children = sorted(scanned, key=lambda entry: entry.name)
        kept = 0
        for entry in children:
            relative = f"{current}/{entry.name}" if current else entry.name
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode) and entry.name in SKIPPED_DIRS:
                continue
            if stat.S_ISDIR(info.st_mode):
                pending.append(relative)
            elif stat.S_ISREG(info.st_mode):
                entries.append((relative, False))
                total_bytes += info.st_size
            else:
                raise BoxValidationError(_refusal(shown, relative, root / relative, info.st_mode))
            kept += 1
            seen += 1
        if current and not kept:
            entries.append((current, True))  # an empty directory would otherwise vanish
        if seen > MAX_PACKAGE_ENTRIES or total_bytes > MAX_PACKAGE_BYTES:
            raise BoxValidationError(
                f"{shown} is too large for a skill package (more than {MAX_PACKAGE_ENTRIES} entries "
                f"or {MAX_PACKAGE_BYTES >> 20} MiB); is it the right directory?"
            )
    return sorted(entries)


def _refusal(shown: Path, relative: str, path: Path, mode: int) -> str:
    if stat.S_ISLNK(mode):
        what = f"a symlink, {relative} -> {os.readlink(path)}"
        fix = "copy what it points to into the package instead"
    else:
        what = f"{relative}, which is not a regular file or directory"
        fix = "remove it"
    return f"skill directory {shown} contains {what}; a skill package holds only files and directories: {fix}"


def _read_regular(path: Path) -> tuple[bytes, int]:
    """Contents and 0o755/0o644 of a regular file, not following a link that replaced it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        return handle.read(), 0o755 if mode & 0o111 else 0o644


def _member(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.create_system = 3  # Unix: the daemon takes the exec bits from external_attr
    info.external_attr = mode << 16
    return info


def _compresses_like_a_bomb(data: bytes) -> bool:
    # Raw deflate, as zipfile writes it, at zipfile's default level.
    deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    return len(data) > _STORE_ABOVE_RATIO * len(deflate.compress(data) + deflate.flush())


def package_bytes(path: Path) -> tuple[bytes, str]:
    """A zip file's bytes and name, or a directory packed by ``zip_directory`` as ``<name>.zip``.
    Blocking: reads the disk."""
    if path.is_dir():
        return zip_directory(path), f"{Path(os.path.realpath(path)).name or 'skill'}.zip"
    try:
        if path.stat().st_size > MAX_PACKAGE_BYTES:
            raise BoxValidationError(f"{path} is larger than {MAX_PACKAGE_BYTES >> 20} MiB; it is not a skill zip")
        return path.read_bytes(), path.name
    except OSError as exc:
        raise BoxValidationError(f"cannot read {path}: {exc.strerror or exc}") from None


# ── installed skills: mounts and files ───────────────────────────────────


def skill_mount(skill: Skill, workspace: str = DEFAULT_MOUNT_PATH) -> MountSpec:
    """The read-only mount that shows ``skill`` at ``<workspace>/.skills/<name>`` in a session."""
    return MountSpec(
        host_path=skill.package_root,
        mount_path=f"{workspace.rstrip('/')}/{SKILLS_DIR_NAME}/{skill.name}",
        mode=HostMountMode.READ_ONLY,
    )


async def skill_mounts(client: BoxClient, names: Iterable[str], workspace: str = DEFAULT_MOUNT_PATH) -> list[MountSpec]:
    """``skill_mount`` of each named skill; ``BoxValidationError`` naming any that is not installed."""
    mounts: list[MountSpec] = []
    for name in dict.fromkeys(names):
        skill = await client.get_skill(name)
        if skill is None:
            raise BoxValidationError(f"no skill named {name!r} is installed")
        mounts.append(skill_mount(skill, workspace))
    return mounts


async def skill_files(client: BoxClient, name: str) -> list[SkillFileEntry]:
    """Every file and directory of the package, hidden ones included, sorted by path."""
    found: list[SkillFileEntry] = []
    pending = ["."]
    while pending:
        directory = pending.pop()
        listing = await client.list_skill_files(name, directory, include_hidden=True, max_entries=MAX_LISTED_ENTRIES)
        found += listing.entries
        pending += [entry.path for entry in listing.entries if entry.is_dir]
        if len(found) > MAX_PACKAGE_ENTRIES:  # the store caps packages below this: stop a runaway walk
            raise BoxValidationError(f"skill {name!r} has more than {MAX_PACKAGE_ENTRIES} entries")
    return sorted(found, key=lambda entry: entry.path)


# ── changes, audited ─────────────────────────────────────────────────────


class SkillService:
    """Skill changes through ``client``, each one audited when ``audit`` is given.

    Reads (``client.list_skills``, ``get_skill``, ``read_skill_file`` …) need no audit and are
    called on the client directly.
    """

    def __init__(self, client: BoxClient, audit: AuditLog | None = None) -> None:
        self.client = client
        self.audit = audit

    async def install_zip(
        self,
        data: bytes,
        filename: str,
        *,
        source_paths: Sequence[str] = (),
        source_subdir: str = "",
        target_suffix: str = "upload",
        actor: str = "bridge",
    ) -> list[Skill]:
        """Upload and install a zip (all its selected skills, or none); one audit line per skill."""
        command = f"install {filename}"
        try:
            skills = await self.client.install_skill_zip(
                data, filename, source_paths=source_paths, source_subdir=source_subdir, target_suffix=target_suffix
            )
        except BoxError as exc:
            await self._record(actor, command, None, None, exc)
            raise
        for skill in skills:
            await self._record(actor, command, skill.name, skill.digest, None)
        return skills

    async def install_path(
        self,
        path: Path,
        *,
        filename: str | None = None,
        source_paths: Sequence[str] = (),
        target_suffix: str = "upload",
        actor: str = "bridge",
    ) -> list[Skill]:
        """Install a local zip file or skill directory (packed by ``zip_directory``). The store
        directory is named after ``filename`` (default: the file's or directory's name)."""
        data, default_name = await anyio.to_thread.run_sync(package_bytes, path)
        return await self.install_zip(
            data,
            filename or default_name,
            source_paths=source_paths,
            target_suffix=target_suffix,
            actor=actor,
        )

    async def create(self, fields: SkillFields, *, actor: str = "bridge") -> Skill:
        """Create a skill (empty, or from ``fields.package_root``); audited."""
        return await self._change(actor, "create", fields.name, functools.partial(self.client.create_skill, fields))

    async def update(self, name: str, fields: SkillUpdate, *, actor: str = "bridge") -> Skill:
        """Rewrite the fields of the skill's SKILL.md that are set; audited."""
        return await self._change(actor, "update", name, functools.partial(self.client.update_skill, name, fields))

    async def delete(self, name: str, *, actor: str = "bridge") -> None:
        """Remove the skill's package; audited."""
        await self._change(actor, "delete", name, functools.partial(self.client.delete_skill, name))

    async def write_file(self, name: str, path: str, content: str, *, actor: str = "bridge") -> SkillFileWritten:
        """Write a UTF-8 file in the skill's package; audited."""
        write = functools.partial(self.client.write_skill_file, name, path, content)
        return await self._change(actor, f"write {path}", name, write)

    async def _change(self, actor: str, command: str, name: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await call()
        except BoxError as exc:
            await self._record(actor, command, name, None, exc)
            raise
        digest = result.digest if isinstance(result, Skill) else None
        await self._record(actor, command, name, digest, None)
        return result

    async def _record(
        self, actor: str, command: str, skill: str | None, digest: str | None, error: BoxError | None
    ) -> None:
        if self.audit is None:
            return
        entry = AuditEntry(
            event="skill_change",
            actor=actor,
            skill=skill,
            digest=digest,
            command=command,
            status="error" if error is not None else "completed",
            error=str(error) if error is not None else None,
        )
        await self.audit.record(entry)
