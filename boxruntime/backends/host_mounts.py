"""Host-side mounts the daemon makes itself (root only): bind mounts for live skill mounting,
and the one safe way to remove a state directory that may hold mount points.

``remove_tree`` unmounts everything under a directory before deleting it: deleting through a
bind mount would delete the files of whatever is mounted there (a skill package), which this
daemon must never do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from boxruntime.errors import BoxSandboxError


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise BoxSandboxError(f"{' '.join(argv[:2])} failed: {result.stderr.strip()[:300]}")


def can_mount() -> bool:
    return os.geteuid() == 0


def make_shared(directory: Path) -> None:
    """Make ``directory`` a mount point whose new sub-mounts propagate to its slaves."""
    directory.mkdir(parents=True, exist_ok=True)
    _run("mount", "--bind", str(directory), str(directory))
    _run("mount", "--make-rshared", str(directory))


def bind_read_only(source: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    _run("mount", "--bind", source, str(target))
    _run("mount", "-o", "remount,bind,ro,nosuid,nodev", str(target))


def mount_points_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first."""
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
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def remove_tree(directory: Path | None) -> None:
    """Unmount whatever is mounted below ``directory``, then delete it."""
    if directory is None or not directory.exists():
        return
    for point in mount_points_under(directory):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30, check=False)
    if mount_points_under(directory):
        raise BoxSandboxError(f"could not unmount everything under {directory}; left it in place")
    shutil.rmtree(directory, ignore_errors=True)
