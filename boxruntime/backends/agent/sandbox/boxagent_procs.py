"""The agent's process table: every process it started, their reaping, their deadlines and the
exit events they end with; the ``signal`` and ``attach`` requests (stdlib only, Python >= 3.8).

As PID 1 the agent reaps every zombie (``wait4(-1)``, which also yields each command's CPU time
and peak RSS), orphans reparented to it included, and kills a command's whole process group and
session when its timeout expires. A process is reported once it has exited *and* its pipes are
drained (boxagent_output); one whose pipes the daemon holds once the daemon took them.
"""

import os
import selectors
import signal

import boxagent_wire as wire
from boxagent_proc import now
from boxagent_tree import kill_rest, kill_tree

EXIT_GRACE_SEC = 0.2  # after the main process exits, how long background children may hold its pipes


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


class ProcessTable:
    def __init__(self, sel, oom, spares):
        self.procs = {}  # id -> Proc
        self.by_pid = {}  # pid -> Proc
        self.exits = ExitWatch(sel)
        self.oom = oom
        self.spares = spares
        self.childless = False  # the last reap found no child at all, running or not
        self.output = None
        self.input = None

    def drives(self, output, inputs):
        """The output pump and input feed whose pipes this table closes when a process exits
        (they look processes up here: made after the table)."""
        self.output = output
        self.input = inputs

    def register(self, on):
        on(wire.Op.SIGNAL, self.op_signal)
        on(wire.Op.ATTACH, self.op_attach)

    def __len__(self):
        return len(self.procs)

    def get(self, proc_id):
        return self.procs.get(proc_id)

    def values(self):
        return self.procs.values()

    def add(self, proc):
        self.procs[proc.id] = proc
        self.by_pid[proc.pid] = proc
        self.exits.watch(proc.pid)

    def detached(self):
        """Ids of the processes nobody is attached to (kept over a lost connection)."""
        return [p.id for p in self.procs.values() if p.conn is None]

    def quiet(self):
        """No command in flight: only long-lived processes the daemon reads directly."""
        return all(p.keep and p.status is None and not p.pipes for p in self.procs.values())

    def signal_all(self, sig):
        for proc in list(self.procs.values()):
            kill_tree(proc, sig)

    def conn_lost(self, conn):
        for proc in list(self.procs.values()):
            if proc.conn is conn:
                proc.conn = None
                if not proc.keep:  # nobody will read an exec's result: end it
                    proc.cancelled = True
                    kill_tree(proc, signal.SIGKILL)

    # ── requests ─────────────────────────────────────────────────────────

    def op_signal(self, conn, header, _body):
        proc = self.procs.get(header[wire.ID])
        if proc is not None:
            sig = int(header.get(wire.Signal.SIGNAL, signal.SIGTERM))
            if header.get(wire.Signal.CANCEL):
                proc.cancelled = True
            kill_tree(proc, sig)
        ack = header.get(wire.Signal.ACK)
        if (
            ack
            and proc is not None
            and proc.status is None
            and int(header.get(wire.Signal.SIGNAL, 0)) == signal.SIGKILL
        ):
            proc.kill_acks.append((conn, ack))  # answered once it is gone (reap): killed means dead
        elif ack:  # the caller waits until the signal is sent
            conn.send({wire.EV: wire.Ev.REPLY, wire.ID: ack, wire.Signal.FOUND: proc is not None})

    def op_attach(self, conn, header, _body):
        proc = self.procs.get(header[wire.ID])
        if proc is None:
            conn.send({wire.EV: wire.Ev.FAILED, wire.ID: header[wire.ID], wire.ERROR: "no such process"})
            return
        proc.conn = conn
        conn.send({wire.EV: wire.Ev.ATTACHED, wire.ID: proc.id})
        if proc.status is not None:
            self.finish(proc)  # it exited while nobody was connected: report it now

    # ── exits and deadlines ──────────────────────────────────────────────

    def reap(self):
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                self.childless = True
                return
            self.childless = False
            if pid == 0:
                return
            self.exits.forget(pid)
            proc = self.by_pid.pop(pid, None)
            if proc is None:
                self.spares.forget(pid)  # a spare that died unused is replaced when idle
                continue  # or an orphan reparented to us; reaping it is all it needs
            proc.status = status
            proc.rusage = rusage
            proc.exited_at = now()
            self.input.close_stdin(proc, "the command has exited")
            proc.popen.returncode = status  # keep Popen from waiting on a reaped pid
            for conn, ack in proc.kill_acks:
                conn.send({wire.EV: wire.Ev.REPLY, wire.ID: ack, wire.Signal.FOUND: True})
            proc.kill_acks = []
            self.output.drain_exited(proc)
            if not proc.pipes:
                self.finish(proc)

    def next_moment(self):
        """When check_times has something to do next, or None."""
        moments = []
        for proc in self.procs.values():
            if proc.deadline is not None and not proc.timed_out:
                moments.append(proc.deadline)
            if proc.exited_at is not None and proc.pipes:
                moments.append(proc.exited_at + EXIT_GRACE_SEC)
            if proc.listen_at is not None:
                moments.append(proc.listen_at)
            if proc.kill_at is not None:
                moments.append(proc.kill_at)
        return min(moments) if moments else None

    def check_times(self):
        t = now()
        for proc in list(self.procs.values()):
            if proc.listen_at is not None and t >= proc.listen_at:
                self.output.watch_pipes(proc)
            if proc.deadline is not None and not proc.timed_out and t >= proc.deadline:
                proc.timed_out = True
                if proc.kill_grace:
                    kill_tree(proc, signal.SIGTERM)
                    proc.kill_at = t + proc.kill_grace
                else:
                    kill_tree(proc, signal.SIGKILL)
            if proc.kill_at is not None and t >= proc.kill_at:
                proc.kill_at = None
                kill_rest(proc, self.by_pid)
                if proc.status is not None and not proc.pipes:
                    self.finish(proc)
            if proc.exited_at is not None and proc.pipes and t >= proc.exited_at + EXIT_GRACE_SEC:
                # The main process is gone; background children still hold its pipes.
                for fd in list(proc.pipes):
                    self.output.close_pipe(proc, fd)

    def finish(self, proc):
        """Report an exited process whose pipes are drained, once: unless it waits for more."""
        if proc.kill_at is not None:
            return  # a timed-out command is reported once its grace is over and the rest killed
        if proc.handoff is not None:
            return  # exited before the daemon took its pipes: report it once they are taken
        if proc.conn is None and proc.keep:
            return  # nobody to tell yet: op_attach reports it
        if self.procs.pop(proc.id, None) is None:
            return
        proc.close_kept()  # reported: nobody takes its pipes again
        if proc.conn is not None:
            proc.conn.send(*proc.exit_frame(self.oom))
