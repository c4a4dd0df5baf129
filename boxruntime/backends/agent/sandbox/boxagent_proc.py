"""What the agent knows about one process, and the exit event it ends with (stdlib only)."""

import os
import signal
import time

import boxagent_wire as wire

# A collected command sends its output in its exit frame: at most this much per stream, so the
# frame stays well under the wire's body limit whatever ``output_cap`` says.
COLLECT_MAX = wire.MAX_BODY // 4


def now():
    return time.monotonic()


def expendable(pid="self"):
    """Make process ``pid`` (and every process it starts, which inherit it) the OOM killer's
    choice before the agent: in a sandbox's memory cgroup the killer takes the task with the
    largest score, and many small commands could otherwise leave the agent, the sandbox's PID 1,
    the largest. Raising a score needs no privilege; where /proc refuses, nothing changes.

    Set before the process runs anything, or a child it forks first keeps the agent's score:
    a spare shell waits for its script, a spawn calls this as its preexec_fn (``self``)."""
    try:
        with open("/proc/%s/oom_score_adj" % pid, "wb", buffering=0) as f:
            f.write(b"1000")
    except OSError:
        pass


class Proc:
    """One spawned command or long-lived process."""

    def __init__(self, pid, popen, conn, header):
        self.id = header[wire.ID]
        self.pid = pid
        self.popen = popen
        self.conn = conn
        # Outlives a lost daemon connection; only a process whose pipes the daemon holds can.
        self.keep = bool(
            header.get(wire.Spawn.KEEP_ON_DISCONNECT)
            and (header.get(wire.Spawn.HANDOFF) or header.get(wire.Spawn.STDIO))
        )
        self.cap = header.get(wire.Spawn.OUTPUT_CAP)  # bytes forwarded per stream; None = all
        # With ``collect``: the output kept for the exit event, instead of ``out`` frames.
        self.collected = [bytearray(), bytearray()] if header.get(wire.Spawn.COLLECT) else None
        if self.collected is not None:
            self.cap = COLLECT_MAX if self.cap is None else min(self.cap, COLLECT_MAX)
        self.totals = [0, 0]
        self.forwarded = [0, 0]
        self.started = now()
        timeout = float(header.get(wire.Spawn.TIMEOUT) or 0)
        # No deadline for none, or for one that is not a positive finite number of seconds.
        self.deadline = self.started + timeout if 0 < timeout < float("inf") else None
        self.timed_out = False
        # With a grace, a timeout sends SIGTERM first and SIGKILL at ``kill_at``; the exit is
        # reported only after that, so nothing of a timed-out command outlives its result.
        self.kill_grace = float(header.get(wire.Spawn.KILL_GRACE) or 0)
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
        # A kept process's own copies of what it handed over: its stdin stays open and its output
        # stays in the pipes (unread: the agent never reads them) while no daemon holds them, and
        # a successor daemon takes them again (boxagent_spawn.op_take_fds).
        self.kept = None
        self.paused = False
        # Input the agent writes for the daemon (boxagent_input): the file it goes to, what
        # waits to be written, and the requests answered once their data is written.
        self.stdin_file = None
        self.stdin_watched = False
        self.stdin_eof = False
        self.inbuf = bytearray()
        self.queued = 0
        self.written = 0
        self.acks = []  # (conn, request id, byte count it is answered at)
        self.tty_fd = None  # the terminal's master side, while the command has one
        self.kill_acks = []  # (connection, token): told once the process is gone (op signal)

    def close_kept(self, which=None):
        """Close the kept copies (all, or the one at index ``which``: 0 stdin)."""
        kept = self.kept or []
        for index, fileobj in enumerate(kept):
            if fileobj is not None and which in (None, index):
                try:
                    fileobj.close()
                except OSError:
                    pass
                kept[index] = None
        if which is None:
            self.kept = None

    def exit_frame(self, oom):
        """The exit event (header, body) of this reaped process; a collected command's output
        is the body, stdout then stderr, split at ``out_len``."""
        status = self.status
        sig = None
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            reason = wire.Reason.EXIT
        else:
            sig = os.WTERMSIG(status)
            code = 128 + sig
            reason = wire.Reason.SIGNAL
        # The OOM killer usually hits a child of the shell, which then exits 128+9 itself. The
        # counter is only read for such exits: it costs a file read, and most commands succeed.
        if code == 128 + signal.SIGKILL and oom.rose():
            reason = wire.Reason.OOM
        if self.timed_out:
            reason = wire.Reason.TIMEOUT
        elif self.cancelled:
            reason = wire.Reason.CANCELLED
        ru = self.rusage
        header = {
            wire.EV: wire.Ev.EXIT,
            wire.ID: self.id,
            wire.Exit.CODE: code,
            wire.Exit.SIGNAL: sig,
            wire.Exit.REASON: reason,
            wire.Exit.WALL_MS: int((self.exited_at - self.started) * 1000),
            wire.Exit.CPU_MS: int((ru.ru_utime + ru.ru_stime) * 1000),
            wire.Exit.PEAK_RSS_KB: int(ru.ru_maxrss),
            wire.Exit.TOTALS: self.totals,
        }
        if self.collected is None:
            return header, b""
        header[wire.Exit.OUT_LEN] = len(self.collected[0])
        return header, bytes(self.collected[0] + self.collected[1])
