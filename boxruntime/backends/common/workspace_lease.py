"""Which private workspaces are in use, and removing the ones nobody will come back for.

A daemon keeps a session's workspace on disk when it exits, so a later daemon on the same data
dir finds the files again (``boxruntime exec --session ID``). Those workspaces must still go
eventually: the sweeper removes a workspace that is not persistent and has been released for
longer than the workspace TTL — and only if no daemon is using it. "In use" is a shared
``flock`` on the workspace's lease file, held for as long as a sandbox has it mounted; the
kernel drops it when the holder exits, however it exits, so a crashed daemon's workspaces are
released too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

LEASE_FILE = ".lease"
META_FILE = "meta.json"

_held: dict[str, int] = {}  # workspace dir -> descriptor holding its shared lock


def _meta(base: Path) -> dict[str, object]:
    try:
        data = json.loads((base / META_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_meta(base: Path, **fields: object) -> None:
    data = {**_meta(base), **fields}
    tmp = base / f".{META_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(data))
    tmp.replace(base / META_FILE)


def hold(base: Path, session_id: str, persistent: bool) -> None:
    """Mark ``base`` in use by this daemon (idempotent) and record whose it is."""
    if str(base) not in _held:
        fd = os.open(base / LEASE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _held[str(base)] = fd
    _write_meta(base, session_id=session_id, persistent=persistent, released_at=None)


def moved(old: Path, new: Path) -> None:
    """The directory was renamed (pool hand-out); the lock travels with the open file."""
    fd = _held.pop(str(old), None)
    if fd is not None:
        _held[str(new)] = fd


def let_go(base: Path) -> None:
    """This daemon no longer uses ``base``; the sweeper's clock starts now."""
    with contextlib.suppress(OSError):
        _write_meta(base, released_at=time.time())
    fd = _held.pop(str(base), None)
    if fd is not None:
        os.close(fd)


def forget(base: Path) -> None:
    """``base`` is being deleted by its holder."""
    fd = _held.pop(str(base), None)
    if fd is not None:
        os.close(fd)


def sweep(root: Path, ttl_sec: float, remove: Callable[[Path], None]) -> list[str]:
    """Remove idle, unused, non-persistent workspaces under ``root``; returns their names."""
    removed: list[str] = []
    now = time.time()
    for base in sorted(root.iterdir()) if root.is_dir() else []:
        if not base.is_dir() or str(base) in _held:
            continue
        try:
            fd = os.open(base / LEASE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live sandbox of some daemon has it mounted
            meta = _meta(base)
            if meta.get("persistent") is True:
                continue
            released = meta.get("released_at")
            since = released if isinstance(released, (int, float)) else base.stat().st_mtime
            if now - since < ttl_sec:
                continue
            remove(base)
            removed.append(base.name)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d idle workspaces: %s", len(removed), ", ".join(removed))
    return removed
