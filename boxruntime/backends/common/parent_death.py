"""Children of the daemon that must not outlive it (a jail's nsjail, a host session's agent)."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """``preexec_fn``: SIGTERM when the daemon dies. Runs in the forked child before exec, so
    it stays minimal. (The signal follows the forking *thread*: fork from the event loop.)"""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
