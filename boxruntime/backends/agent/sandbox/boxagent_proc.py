"""What the agent knows about one process, and how it finds and counts what belongs to it
(stdlib only)."""

import os
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


def session_members(sid):
    """Pids whose session id is ``sid`` (processes that left the group but not the session)."""
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
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
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


class Proc:
    """One spawned command or long-lived process."""

    def __init__(self, pid, popen, conn, header):
        self.id = header["id"]
        self.pid = pid
        self.popen = popen
        self.conn = conn
        # Outlives a lost daemon connection; only a process whose pipes the daemon holds can.
        self.keep = bool(header.get("keep_on_disconnect") and header.get("handoff"))
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
