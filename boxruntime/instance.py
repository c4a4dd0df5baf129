"""Which daemons are alive: one locked file per running daemon instance in the data dir.

Several daemons may share a data dir and an engine (two ``boxruntime exec`` at once, or a
WebSocket daemon beside a stdio one). Orphan cleanup removes only sandboxes whose daemon is
gone, which it learns by taking that daemon's lock: the kernel releases it when the process
dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def instances_dir(data_dir: Path) -> Path:
    return data_dir / "instances"


class InstanceLock:
    def __init__(self, data_dir: Path, instance_id: str | None = None) -> None:
        self.instance_id = instance_id or secrets.token_hex(6)
        self.path = instances_dir(data_dir) / f"{self.instance_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def instance_alive(data_dir: Path, instance_id: str) -> bool:
    """True while the daemon ``instance_id`` of ``data_dir`` still holds its lock."""
    if not instance_id or "/" in instance_id or instance_id.startswith("."):
        return False
    path = instances_dir(data_dir) / f"{instance_id}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()  # a dead daemon's leftover
    return False


@contextlib.contextmanager
def adoption_lock(data_dir: Path) -> Iterator[None]:
    """Held while a daemon claims dead daemons' sessions and removes their orphans, so that
    one daemon's cleanup never removes a sandbox another is taking over (blocking: run it in a
    worker thread from async code)."""
    path = data_dir / "records" / ".adoption.lock"  # beside the records it guards
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
