"""Private per-session workspaces on the host, with a kernel-enforced size when asked.

A workspace lives at ``<data>/workspaces/<key>`` so that a later daemon on the same data dir
finds its files again. With ``workspace_quota_mb > 0`` it is a loop-mounted ext4 image of that
size (disk-backed, survives the sandbox, enforced by the kernel); where that cannot be done
(not root, no mkfs.ext4, no loop devices) the backend uses a size-limited tmpfs inside the
sandbox instead, and says so.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from boxruntime.errors import BoxSandboxError

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


def prepare(data_dir: Path, key: str, quota_mb: int, uid: int, gid: int) -> Workspace:
    """Create (or reuse) the private workspace of session ``key``."""
    base = workspaces_root(data_dir) / key
    files = base / "files"
    files.mkdir(parents=True, exist_ok=True)
    if quota_mb <= 0 or not loop_quota_supported():
        if not _mounted(files):
            _own(files, uid, gid)
        return Workspace(files, None)
    image = base / _IMAGE_NAME
    if not _mounted(files):
        fresh = not image.exists()
        if fresh:
            with image.open("wb") as handle:
                handle.truncate(quota_mb * 1024 * 1024)
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", f"root_owner={uid}:{gid}", str(image)])
        elif image.stat().st_size != quota_mb * 1024 * 1024:
            raise BoxSandboxError(f"workspace {key} exists with a different quota; delete the session to change it")
        _run(["mount", "-o", "loop,nodev,nosuid", str(image), str(files)])
        _own(files, uid, gid)
    return Workspace(files, "loop-ext4")


def release(data_dir: Path, key: str, remove: bool) -> None:
    """Unmount the workspace of ``key``; delete its files when ``remove``."""
    base = workspaces_root(data_dir) / key
    files = base / "files"
    if _mounted(files):
        try:
            _run(["umount", str(files)])
        except BoxSandboxError:
            _run(["umount", "-l", str(files)])  # busy: detach now, the kernel frees it later
    if remove:
        shutil.rmtree(base, ignore_errors=True)


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise BoxSandboxError(f"{argv[0]} failed: {result.stderr.strip()[:300]}")
