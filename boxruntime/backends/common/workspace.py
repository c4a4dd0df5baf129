"""Private per-session workspaces on the host, with a kernel-enforced size when asked.

A workspace lives at ``<data>/workspaces/<key>`` so that a later daemon on the same data dir
finds its files again. With ``workspace_quota_mb > 0`` it is a loop-mounted ext4 image of that
size (disk-backed, survives the sandbox, enforced by the kernel); where that cannot be done
(not root, no mkfs.ext4, no loop devices) the backend uses a size-limited tmpfs inside the
sandbox instead, and says so.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from boxruntime.backends.common import host_mounts, workspace_lease
from boxruntime.backends.common.workspace_acl import WorkspaceAcl
from boxruntime.config import Settings
from boxruntime.errors import BoxSandboxError, BoxValidationError
from boxruntime.models import BoxSpec
from boxruntime.security import ResolvedMount

log = logging.getLogger(__name__)

_IMAGE_NAME = "quota.ext4"


@dataclass(frozen=True, slots=True)
class Workspace:
    path: Path  # what is mounted into the sandbox
    quota_mechanism: str | None  # "loop-ext4", or None (unlimited, or handled by the backend)


def workspaces_root(data_dir: Path) -> Path:
    return data_dir / "workspaces"


def _own(path: Path, uid: int, gid: int) -> None:
    try:
        os.chown(path, uid, gid)
        path.chmod(0o755)
    except PermissionError:
        # A non-root daemon cannot hand the directory over; let the sandbox user write anyway.
        path.chmod(0o777)


def loop_quota_supported() -> bool:
    return os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None and os.path.exists("/dev/loop-control")


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


def prepare(data_dir: Path, spec: BoxSpec, key: str, uid: int, gid: int) -> Workspace:
    """Create (or reuse) the private workspace of session ``key``, and hold it while in use."""
    quota_mb = spec.workspace_quota_mb
    base = workspaces_root(data_dir) / key
    files = base / "files"
    files.mkdir(parents=True, exist_ok=True)
    workspace_lease.hold(base, spec.session_id, spec.persistent)
    if quota_mb <= 0 or not loop_quota_supported():
        if not _mounted(files):
            _own(files, uid, gid)
        return Workspace(files, None)
    if not _mounted(files):
        mount_quota_image(base / _IMAGE_NAME, files, quota_mb, uid, gid)
        _own(files, uid, gid)
    return Workspace(files, "loop-ext4")


def mount_quota_image(image: Path, target: Path, quota_mb: int, uid: int, gid: int) -> None:
    """Mount an ext4 image of ``quota_mb`` at ``target`` (made on first use): a hard limit on
    bytes and inodes that the kernel enforces for every writer, the sandbox and the host alike.
    Files already in ``target`` move into the image rather than being hidden under it."""
    if _mounted(target):
        return
    if image.exists() and image.stat().st_size != quota_mb * 1024 * 1024:
        raise BoxSandboxError(f"{target} has a quota image of another size; remove {image} to change the quota")
    if not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        with image.open("wb") as handle:
            handle.truncate(quota_mb * 1024 * 1024)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", f"root_owner={uid}:{gid}", str(image)])
    existing = list(target.iterdir()) if target.is_dir() else []
    if existing:
        staging = image.with_suffix(".staging")
        staging.mkdir(exist_ok=True)
        _run(["mount", "-o", "loop,nodev,nosuid", str(image), str(staging)])
        try:
            for entry in existing:
                shutil.move(str(entry), str(staging / entry.name))
        finally:
            _run(["umount", str(staging)])
            staging.rmdir()
    target.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-o", "loop,nodev,nosuid", str(image), str(target)])


def adopt(data_dir: Path, from_key: str, to_key: str, spec: BoxSpec) -> Path | None:
    """Give the workspace of ``from_key`` to ``to_key`` (a pooled sandbox becoming a session's).

    None when ``to_key`` already has a workspace on disk: its files must not be shadowed. The
    rename is safe while the sandbox runs: its bind mount holds the directory, not the name.
    """
    root = workspaces_root(data_dir)
    target = root / to_key
    if target.exists():
        return None
    (root / from_key).rename(target)
    workspace_lease.moved(root / from_key, target)
    workspace_lease.hold(target, spec.session_id, spec.persistent)
    return target / "files"


def release(data_dir: Path, key: str, remove: bool) -> None:
    """Unmount the workspace of ``key``; delete its files when ``remove``."""
    base = workspaces_root(data_dir) / key
    files = base / "files"
    unmount(files)
    if remove:
        workspace_lease.forget(base)
        host_mounts.remove_tree(base)
    elif base.exists():
        workspace_lease.let_go(base)


def unmount(files: Path) -> None:
    """Unmount ``files`` if something is mounted there (lazily when it is busy)."""
    if _mounted(files):
        try:
            _run(["umount", str(files)])
        except BoxSandboxError:
            _run(["umount", "-l", str(files)])  # busy: detach now, the kernel frees it later


def _remove_unused(base: Path) -> None:
    unmount(base / "files")
    host_mounts.remove_tree(base)


def sweep(data_dir: Path, ttl_sec: float) -> list[str]:
    """Remove private workspaces that no daemon uses, idle past ``ttl_sec`` (not persistent)."""
    return workspace_lease.sweep(workspaces_root(data_dir), ttl_sec, _remove_unused)


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise BoxSandboxError(f"{argv[0]} failed: {result.stderr.strip()[:300]}")


@dataclass
class WorkspacePlan:
    """How a session's workspace is provided, decided the same way for every backend."""

    mount_path: str
    host: ResolvedMount | None = None  # a host directory bound at mount_path
    tmpfs_mb: int = 0  # when host is None: a tmpfs of this size at mount_path
    private: Path | None = None  # our own directory (its files persist between daemons)
    quota_enforced: bool | None = None
    notes: list[str] = field(default_factory=list)
    acl: WorkspaceAcl | None = None  # the sandbox user's access to a host directory root owns


def plan(
    data_dir: Path, spec: BoxSpec, key: str, host_mount: ResolvedMount | None, uid: int, gid: int
) -> WorkspacePlan:
    quota = spec.workspace_quota_mb
    result = WorkspacePlan(spec.mount_path)
    if host_mount is not None:
        result.host = host_mount
        result.acl = for_host_workspace(host_mount, uid, gid, result.notes)
        if quota > 0:
            result.quota_enforced = False
            result.notes.append(
                f"workspace_quota_mb={quota} is not enforced: the workspace is the host "
                f"directory {host_mount.host_path}, which has no size limit of its own"
            )
        return result
    if quota > 0 and not loop_quota_supported():
        result.tmpfs_mb = quota
        result.quota_enforced = True
        result.notes.append(
            f"workspace is a {quota} MB tmpfs (kernel-enforced; held in memory, so it also "
            "counts towards memory_mb, and its files end with the session)"
        )
        return result
    ws = prepare(data_dir, spec, key, uid, gid)
    result.private = ws.path
    result.host = ResolvedMount(str(ws.path), spec.mount_path, read_only=False)
    if quota > 0:
        result.quota_enforced = True
        result.notes.append(f"workspace is a {quota} MB loop-mounted ext4 image (kernel-enforced)")
    return result


def sandbox_identity(settings: Settings, workspace: ResolvedMount | None, notes: list[str]) -> tuple[int, int]:
    """The uid:gid the sandbox runs as: the configured non-root user, or the owner of a writable
    host workspace when that owner is not root, so files keep their owner on both sides. (A
    root-owned one is made writable for the sandbox user by ``plan``: see workspace_acl.)"""
    uid, gid = settings.sandbox_uid, settings.sandbox_gid
    if workspace is None or workspace.read_only:
        return uid, gid
    st = os.stat(workspace.host_path)
    if st.st_uid != 0:
        if (st.st_uid, st.st_gid) != (uid, gid):
            notes.append(f"sandbox runs as {st.st_uid}:{st.st_gid}, the owner of host_path {workspace.host_path}")
        return st.st_uid, st.st_gid
    return uid, gid


def for_host_workspace(mount: ResolvedMount, uid: int, gid: int, notes: list[str]) -> WorkspaceAcl | None:
    """The ACL that lets sandbox user ``uid`` write the writable host workspace ``mount``, when
    someone else (root) owns it; None when nothing is needed. Refuses with a
    ``BoxValidationError`` that says what to do where it cannot be given."""
    if mount.read_only or uid == 0:
        return None
    st = os.stat(mount.host_path)
    if st.st_uid == uid:
        # The sandbox owns the root, but a root process (LangBot, sharing the directory) may
        # still make 0700/0600 entries in it later: a root daemon keeps those open to it too.
        if os.geteuid() != 0:
            return None
        owned = WorkspaceAcl(mount.host_path, mount.mount_path, uid)
        try:
            owned.grant_root()
        except OSError as exc:
            notes.append(
                f"entries a root process makes in host_path {mount.host_path} may stay closed to the "
                f"sandbox: {_why_not(exc, uid, gid)}"
            )
            return None
        return owned
    acl = WorkspaceAcl(mount.host_path, mount.mount_path, uid)
    try:
        acl.grant_root()
    except OSError as exc:
        why = _why_not(exc, uid, gid)
        if _writable_by(st, gid):
            notes.append(
                f"host_path {mount.host_path} is writable by the sandbox user {uid}:{gid}, but the "
                f"directories its owner (uid {st.st_uid}) creates inside may not be: {why}"
            )
            return None
        raise BoxValidationError(
            f"host_path {mount.host_path} is owned by uid {st.st_uid} and the sandbox runs as {uid}:{gid}, "
            f"which can write it only through a POSIX ACL entry, and {why}"
        ) from exc
    notes.append(
        f"host_path {mount.host_path} is owned by uid {st.st_uid}: the sandbox user {uid} writes it through "
        "a POSIX ACL entry (what it creates stays owned by it)"
    )
    return acl


def _writable_by(st: os.stat_result, gid: int) -> bool:
    return bool(st.st_mode & 0o002) or (st.st_gid == gid and bool(st.st_mode & 0o020))


def _why_not(exc: OSError, uid: int, gid: int) -> str:
    instead = f"chown the directory to {uid}:{gid}, or mount it read-only (host_path_mode: ro)"
    if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return f"its filesystem does not support POSIX ACLs: mount it with ACL support (-o acl), {instead}"
    if exc.errno in (errno.EPERM, errno.EACCES):
        return f"this daemon (uid {os.geteuid()}) may not set it: run the daemon as root, {instead}"
    if exc.errno == errno.EROFS:
        return f"it is on a read-only filesystem: mount it read-only (host_path_mode: ro), or {instead}"
    return f"setting it failed ({exc.strerror}): {instead}"
