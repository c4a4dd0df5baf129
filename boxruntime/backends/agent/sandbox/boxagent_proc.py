"""What the agent knows about one process, and how it finds and counts what belongs to it
(stdlib only)."""

import os
import selectors
import signal
import time

# A collected command sends its output in its exit frame: at most this much per stream, so the
# frame stays well under the daemon's 32 MiB limit whatever ``output_cap`` says.
COLLECT_MAX = 8 << 20


def now():
    return time.monotonic()


def oom_kills():
    """The sandbox cgroup's OOM-kill counter (v2 or v1), or None where it cannot be read."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


class OomCounter:
    """The sandbox's OOM kills, to tell whether a SIGKILL came from the OOM killer.

    Disabled on a host (the agent has no cgroup of its own: the counter it could read counts
    kills anywhere in the machine or the container it runs in)."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.seen = oom_kills() if enabled else None

    def rose(self):
        """Whether an OOM kill happened since the last look (a file read: ask only when needed)."""
        if not self.enabled:
            return False
        seen, self.seen = self.seen, oom_kills()
        return self.seen is not None and seen is not None and self.seen > seen


def process_table():
    """``(pid, ppid, pgrp, session)`` of every process this agent can see in /proc."""
    rows = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return rows
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp session ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3:
            rows.append((int(entry), int(fields[1]), int(fields[2]), int(fields[3])))
    return rows


def session_members(sid):
    """Pids in session ``sid`` but outside its leader's process group ``sid``: the processes
    that left the group but not the session (killpg does not reach them)."""
    return [pid for pid, _, pgrp, session in process_table() if session == sid and pgrp != sid]


def descendants(root, table=None):
    """Pids of every process below ``root`` in the process tree."""
    children = {}
    for pid, ppid, _, _ in process_table() if table is None else table:
        children.setdefault(ppid, []).append(pid)
    found = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), ()):
            found.append(child)
            pending.append(child)
    return found


def members_below(root, group):
    """Descendants of ``root`` whose process group or session is ``group``: what is left of a
    command whose leader was already reaped, found without touching anything outside the
    agent's own tree even if the number has been reused elsewhere on the machine since."""
    table = process_table()
    below = set(descendants(root, table))
    return [pid for pid, _, pgrp, sid in table if pid in below and group in (pgrp, sid)]


def _kill(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_tree(proc, sig):
    """The command's process group, then what left the group but not the session: each
    process once (a SIGTERM trap must not run twice for one kill)."""
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass
    _kill(session_members(proc.pid), sig)


def kill_rest(proc, live):
    """SIGKILL for what is left of a timed-out command once its grace is over; ``live`` maps
    the pids of the agent's running processes."""
    if proc.status is None:
        kill_tree(proc, signal.SIGKILL)  # the leader is alive: its group is still its own
    elif proc.pid not in live:  # else the number names another command of ours now
        _kill(members_below(os.getpid(), proc.pid), signal.SIGKILL)


class Proc:
    """One spawned command or long-lived process."""

    def __init__(self, pid, popen, conn, header):
        self.id = header["id"]
        self.pid = pid
        self.popen = popen
        self.conn = conn
        # Outlives a lost daemon connection; only a process whose pipes the daemon holds can.
        self.keep = bool(header.get("keep_on_disconnect") and (header.get("handoff") or header.get("stdio")))
        self.cap = header.get("output_cap")  # bytes forwarded per stream; None = all
        # With ``collect``: the output kept for the exit event, instead of ``out`` frames.
        self.collected = [bytearray(), bytearray()] if header.get("collect") else None
        if self.collected is not None:
            self.cap = COLLECT_MAX if self.cap is None else min(self.cap, COLLECT_MAX)
        self.totals = [0, 0]
        self.forwarded = [0, 0]
        self.started = now()
        timeout = header.get("timeout")
        self.deadline = self.started + float(timeout) if timeout else None
        self.timed_out = False
        # With a grace, a timeout sends SIGTERM first and SIGKILL at ``kill_at``; the exit is
        # reported only after that, so nothing of a timed-out command outlives its result.
        self.kill_grace = float(header.get("kill_grace") or 0)
        self.kill_at = None
        self.cancelled = False
        self.status = None
        self.rusage = None
        self.exited_at = None
        self.pipes = {}  # fd -> stream number (1 stdout, 2 stderr)
        self.files = {}  # fd -> the Popen file object that owns it (closing it closes the fd once)
        self.readers = {}  # fd -> the callback that reads it
        self.listen_at = None  # when the pipes start being watched, if they are not yet
        self.handoff = None  # [stdin, stdout, stderr] files waiting for the daemon to take them
        self.paused = False

    def exit_frame(self, oom):
        """The exit event (header, body) of this reaped process; a collected command's output
        is the body, stdout then stderr, split at ``out_len``."""
        status = self.status
        sig = None
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            reason = "exit"
        else:
            sig = os.WTERMSIG(status)
            code = 128 + sig
            reason = "signal"
        # The OOM killer usually hits a child of the shell, which then exits 128+9 itself. The
        # counter is only read for such exits: it costs a file read, and most commands succeed.
        if code == 128 + signal.SIGKILL and oom.rose():
            reason = "oom"
        if self.timed_out:
            reason = "timeout"
        elif self.cancelled:
            reason = "cancelled"
        ru = self.rusage
        header = {
            "ev": "exit",
            "id": self.id,
            "code": code,
            "signal": sig,
            "reason": reason,
            "wall_ms": int((self.exited_at - self.started) * 1000),
            "cpu_ms": int((ru.ru_utime + ru.ru_stime) * 1000),
            "peak_rss_kb": int(ru.ru_maxrss),
            "totals": self.totals,
        }
        if self.collected is None:
            return header, b""
        header["out_len"] = len(self.collected[0])
        return header, bytes(self.collected[0] + self.collected[1])


def _reap_follows(_mask):
    """A pidfd turned readable: its process exited, and every loop iteration ends with reap()."""


class ExitWatch:
    """Commands' pidfds in the agent's selector: an exit wakes the loop directly, with no
    signal delivered, handled and turned into a wake-up write on the way. Where pidfds do not
    work (Python < 3.9, kernel < 5.3, a seccomp filter) ``enabled`` is False and the agent
    relies on SIGCHLD instead."""

    def __init__(self, sel):
        self.sel = sel
        self.fds = {}  # pid -> pidfd
        try:
            os.close(os.pidfd_open(os.getpid()))
            self.enabled = True
        except (AttributeError, OSError):
            self.enabled = False

    def watch(self, pid):
        if not self.enabled:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # the periodic wake-up still reaps it
        self.fds[pid] = fd
        self.sel.register(fd, selectors.EVENT_READ, _reap_follows)

    def forget(self, pid):
        fd = self.fds.pop(pid, None)
        if fd is not None:
            self.sel.unregister(fd)
            os.close(fd)
