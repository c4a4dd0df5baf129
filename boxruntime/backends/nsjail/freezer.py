"""Freezing a jail: the cgroup v1 freezer, which stops every task of a group until thawed.

nsjail puts a jail in memory, pids and cpu groups, not in a freezer group, so the backend makes
one per jail (``freezer/boxruntime/<sandbox id>``) and moves the jail's processes into it when
it freezes the jail: the children a process forks later are born in its group. A process
forked between the listing and the move would escape, so the listing is checked again once
the group is frozen, and the freeze is redone until nothing is left outside.

cgroup v2 (``cgroup.freeze`` in the jail's own group) is not done here: these machines have v1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from boxruntime.backends.nsjail.cgroups import PARENT, V1_ROOT
from boxruntime.errors import BoxSandboxError

ROOT = V1_ROOT / "freezer" / PARENT
SETTLE_SEC = 2.0  # how long the kernel may take to stop every task
ATTEMPTS = 5


def supported() -> bool:
    """A writable v1 freezer hierarchy (root, cgroup v1)."""
    base = V1_ROOT / "freezer"
    if not (base / "cgroup.procs").exists():
        return False
    with contextlib.suppress(OSError):
        ROOT.mkdir(exist_ok=True)
    return ROOT.is_dir() and os.access(ROOT, os.W_OK)


def _group(name: str) -> Path:
    return ROOT / name


def _state(group: Path) -> str:
    return (group / "freezer.state").read_text().strip()


def _members(group: Path) -> set[int]:
    try:
        return {int(p) for p in (group / "cgroup.procs").read_text().split()}
    except OSError:
        return set()


def freeze(name: str, processes: Callable[[], list[int]]) -> None:
    """Freeze every process ``processes()`` lists (the jail's, read afresh each attempt)."""
    group = _group(name)
    group.mkdir(exist_ok=True)
    for _ in range(ATTEMPTS):
        for pid in processes():
            try:
                (group / "cgroup.procs").write_text(str(pid))
            except OSError as exc:
                if exc.errno != errno.ESRCH:  # gone meanwhile: nothing to freeze
                    raise BoxSandboxError(f"cannot freeze {name}: {exc.strerror}") from exc
        (group / "freezer.state").write_text("FROZEN")
        deadline = time.monotonic() + SETTLE_SEC
        while _state(group) != "FROZEN":
            if time.monotonic() > deadline:
                thaw(name)
                raise BoxSandboxError(f"{name} did not freeze within {SETTLE_SEC:g} s")
            time.sleep(0.001)
        if set(processes()) <= _members(group):
            return
        thaw(name)  # a process forked before its parent moved: move it too, and again
    raise BoxSandboxError(f"{name} kept starting processes while being frozen")


def thaw(name: str) -> None:
    group = _group(name)
    if group.is_dir() and _state(group) != "THAWED":
        (group / "freezer.state").write_text("THAWED")


def frozen(name: str) -> bool:
    group = _group(name)
    return group.is_dir() and _state(group) != "THAWED"


def remove(name: str) -> None:
    """Thaw and remove the group (its processes are gone, or go back to the root group)."""
    group = _group(name)
    if not group.is_dir():
        return
    with contextlib.suppress(OSError):
        thaw(name)
        for pid in _members(group):
            with contextlib.suppress(OSError):
                (ROOT.parent / "cgroup.procs").write_text(str(pid))
        group.rmdir()
