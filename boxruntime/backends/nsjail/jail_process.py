"""nsjail itself, the parent of one jail: a child of this daemon, or one a dead daemon left.

A jail whose nsjail dies dies with it (nsjail gives the jail's init a parent-death signal), so
a jail outlives its daemon exactly as long as its nsjail does: the backend starts nsjail in a
session of its own and, when sandboxes should outlive the daemon, without a parent-death signal
of its own. A successor finds it again by pid, checked against the start time recorded with it
(a pid may be reused), and follows it through a pidfd: it can signal it and see it exit, though
only its new parent (init) reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from pathlib import Path

import anyio


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if there is no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None  # exited, waiting to be reaped
    return int(fields[19])


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0") if part]


class JailProcess:
    def __init__(self, pid: int, child: asyncio.subprocess.Process | None = None, pidfd: int | None = None) -> None:
        self.pid = pid
        self.started = start_ticks(pid)
        self._child = child
        self._pidfd = pidfd

    @classmethod
    def launched(cls, child: asyncio.subprocess.Process) -> JailProcess:
        return cls(child.pid, child=child)

    @classmethod
    def found(cls, pid: int, started: int | None) -> JailProcess | None:
        """The nsjail a dead daemon left as ``pid``, if it still runs (and is the same process)."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        if started is None or start_ticks(pid) != started:
            os.close(fd)
            return None
        return cls(pid, pidfd=fd)

    @property
    def running(self) -> bool:
        if self._child is not None:
            return self._child.returncode is None
        if self._pidfd is None:
            return False
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        return not readable  # a pidfd turns readable when its process exits

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._child is not None:
                self._child.send_signal(sig)
            elif self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for it to exit; whether it did."""
        if self._child is not None:
            try:
                await asyncio.wait_for(self._child.wait(), timeout)
            except TimeoutError:
                return False
            return True
        fd = self._pidfd
        if fd is None:
            return True
        readable, _, _ = await anyio.to_thread.run_sync(select.select, [fd], [], [], timeout)
        return bool(readable)

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
