"""Finding and signalling the processes that belong to a command (stdlib only, Python >= 3.8).

A command runs as the leader of its own session and process group; what it starts may leave
the group (``setpgid``) but rarely the session, and once the leader is reaped its number may
name another process. These helpers read /proc to find what a signal must reach, and never
touch a process outside the agent's own tree.
"""

import os
import signal


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


def signal_all(pids, sig):
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
    signal_all(session_members(proc.pid), sig)


def kill_rest(proc, live):
    """SIGKILL for what is left of a timed-out command once its grace is over; ``live`` maps
    the pids of the agent's running processes."""
    if proc.status is None:
        kill_tree(proc, signal.SIGKILL)  # the leader is alive: its group is still its own
    elif proc.pid not in live:  # else the number names another command of ours now
        signal_all(members_below(os.getpid(), proc.pid), signal.SIGKILL)
