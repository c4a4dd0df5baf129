"""The agent run directly on a host (the ``host`` backend) instead of as a sandbox's init.

Stdlib only, Python >= 3.8. As a sandbox's PID 1 the agent is the parent of last resort of
everything the sandbox runs, and the end of the sandbox ends it all. On a host it is neither
unless it sees to it: it makes itself a *child subreaper* (prctl), so that orphaned
descendants of its commands are reparented to it instead of to the host's init, where it can
still find them; and when it is told to stop it takes its whole tree down itself: SIGTERM to
every descendant, SIGKILL after a grace to whatever is left, and it exits only once it has no
child left. Nothing outside its own tree is ever signalled.
"""

import ctypes
import os
import signal

from boxagent_proc import now
from boxagent_tree import descendants, signal_all

PR_SET_CHILD_SUBREAPER = 36
STOP_GRACE_SEC = 2.0
KILL_SWEEP_SEC = 0.05  # once past the grace: how often what is left is killed again


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, "prctl(PR_SET_CHILD_SUBREAPER): %s" % os.strerror(error))


class HostMode:
    """What the agent does differently when it is not a sandbox's init."""

    def __init__(self):
        become_subreaper()
        self.kill_at = None  # once stopping: when the descendants still alive get SIGKILL

    def stop(self):
        """A stop signal: SIGTERM to the whole tree now, SIGKILL to the rest after a grace."""
        if self.kill_at is None:
            self.kill_at = now() + STOP_GRACE_SEC
        signal_all(descendants(os.getpid()), signal.SIGTERM)

    def next_moment(self):
        return self.kill_at

    def tick(self):
        """Past the grace, every loop iteration kills whatever is still below the agent (a
        process can fork while it is being killed; its children are reparented to us)."""
        if self.kill_at is not None and now() >= self.kill_at:
            signal_all(descendants(os.getpid()), signal.SIGKILL)
            self.kill_at = now() + KILL_SWEEP_SEC  # not a busy loop over one that dies slowly
