"""Host-side mounts the daemon makes itself (root only), and the one safe way to remove a state
directory that may hold mount points.

Two features bind host directories into sandboxes that are already running: live skill
mounting and the warm pool's workspace hand-out. Both use a *carrier*: a directory that is a
shared mount of its own peer group, bound into the sandbox with ``rslave`` propagation, so a
mount made on the carrier later appears inside the sandbox as well.

A read-only bind must be read-only the moment it appears: ``mount --bind`` makes a writable
mount and a remount makes it read-only only afterwards, and by then the writable copy has
already propagated into the sandbox (a remount does not propagate). So a read-only bind is
prepared in a private staging directory first and bound onto its target from there: the
propagated copies are clones of an already read-only mount.

The mounts are made with mount(2) directly: the warm pool does this on a session's creation
path, where running the ``mount`` program (a few ms each) would cost more than the hand-out.

``remove_tree`` unmounts everything under a directory before deleting it: deleting through a
bind mount would delete the files of whatever is mounted there (a skill package, a user's
workspace), which this daemon must never do.
"""

from __future__ import annotations

import ctypes
import functools
import os
import secrets
import shutil
from pathlib import Path

from boxruntime.errors import BoxSandboxError

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
_CAP_SYS_ADMIN = 21
_READ_ONLY_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV
_UNMOUNT_ROUNDS = 16  # stacked mounts on one point come off one per round

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: Path | str, flags: int) -> None:
    src = None if source is None else os.fsencode(source)
    if _libc.mount(src, os.fsencode(str(target)), None, ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise BoxSandboxError(f"mount {source or ''} on {target} failed: {os.strerror(err)}")


def _umount(target: Path | str, lazy: bool = False) -> bool:
    return bool(_libc.umount2(os.fsencode(str(target)), MNT_DETACH if lazy else 0) == 0)


@functools.cache
def can_mount() -> bool:
    """Root with CAP_SYS_ADMIN: a daemon that can make mounts at all. (The deploy image drops
    every capability, so there mounts are fixed when a sandbox is created.) Whether its mounts
    reach the engine's sandboxes is checked where it matters: see workspace_carrier.verified."""
    return os.geteuid() == 0 and _has_cap_sys_admin()


def _has_cap_sys_admin() -> bool:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << _CAP_SYS_ADMIN))
    except (OSError, ValueError, IndexError):
        pass
    return False


def make_shared(directory: Path) -> None:
    """Make ``directory`` a carrier: a mount point whose new sub-mounts propagate to its slaves.

    It gets a peer group of its own (private, then shared), so nothing mounted elsewhere on the
    host propagates into it and nothing mounted on it propagates anywhere but its slaves.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _mount(str(directory), directory, MS_BIND)
    try:
        _mount(None, directory, MS_PRIVATE)
        _mount(None, directory, MS_SHARED)
    except BoxSandboxError:
        _umount(directory, lazy=True)
        raise


def bind(source: str, target: Path, read_only: bool, staging: Path) -> None:
    """Bind ``source`` on ``target`` (usually in a carrier); ``staging`` is a directory outside
    any carrier where a read-only bind is made read-only before it reaches ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    if not read_only:
        _mount(source, target, MS_BIND | MS_REC)
        return
    stage = staging / f".stage-{secrets.token_hex(4)}"
    stage.mkdir(parents=True)
    try:
        # Not recursive: a read-only remount covers only the top mount, and a writable mount
        # below a read-only workspace or skill must not come along.
        _mount(source, stage, MS_BIND)
        try:
            _mount(None, stage, MS_REMOUNT | MS_BIND | _READ_ONLY_FLAGS)
            _mount(str(stage), target, MS_BIND)
        finally:
            _umount(stage, lazy=True)
    finally:
        stage.rmdir()


def unmount(target: Path) -> None:
    """Take the top mount off ``target``; its removal propagates like its creation did."""
    if not _umount(target) and not _umount(target, lazy=True):
        raise BoxSandboxError(f"could not unmount {target}: {os.strerror(ctypes.get_errno())}")


def mount_points_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first (a point mounted over twice is
    listed twice)."""
    root = os.path.realpath(directory)
    points = []
    try:
        with open("/proc/self/mountinfo") as info:
            for line in info:
                # Field 5 is the mount point, with spaces and the like octal-escaped.
                point = line.split()[4].encode().decode("unicode_escape")
                if point == root or point.startswith(root.rstrip("/") + "/"):
                    points.append(point)
    except OSError:
        return []
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def remove_tree(directory: Path | None) -> None:
    """Unmount whatever is mounted below ``directory``, then delete it."""
    if directory is None or not directory.exists():
        return
    for _ in range(_UNMOUNT_ROUNDS):
        points = mount_points_under(directory)
        if not points:
            break
        for point in dict.fromkeys(points):
            _umount(point, lazy=True)
    if mount_points_under(directory):
        raise BoxSandboxError(f"could not unmount everything under {directory}; left it in place")
    shutil.rmtree(directory, ignore_errors=True)
