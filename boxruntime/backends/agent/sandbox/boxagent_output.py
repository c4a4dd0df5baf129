"""Reading what commands write: their stdout and stderr pipes (stdlib only, Python >= 3.8).

A streamed command's output goes out in ``out`` frames as it is read, paused while too much of
it waits for the daemon; a collected one's is kept for its exit frame. A process whose pipes
are all closed after its exit is handed back to the process table to be reported.
"""

import os
import selectors

import boxagent_wire as wire
from boxagent_proc import now

READ_CHUNK = 65536
# A collected command's pipes are watched only after this long: most commands end sooner, and
# their output (up to a pipe's 64 KiB) is then read once, at their exit, instead of waking the
# agent when it is written. A command that writes more just waits this long for its reader.
QUIET_START_SEC = 0.005
DRAIN_READS = 4  # reads per pipe of an exited process before it waits its turn in the loop
PAUSE_ABOVE = 4 << 20  # stop reading a process's pipes while this much output waits to be sent


class OutputPump:
    def __init__(self, sel, procs):
        self.sel = sel
        self.procs = procs  # the process table, which reports a process once its pipes are drained

    def read_output_of(self, proc, pipes):
        """Take over the output of a process the agent just started: ``(stream, file)`` pairs,
        its stdout and stderr pipes, or a terminal's master side as stream 1."""
        for stream, pipe in pipes:
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            proc.pipes[fd] = stream
            proc.files[fd] = pipe
            proc.readers[fd] = self.pipe_reader(proc, fd)
        if proc.collected is not None:
            proc.listen_at = now() + QUIET_START_SEC
        else:
            self.watch_pipes(proc)

    def pipe_reader(self, proc, fd):
        """The selector callback for one pipe; it returns whether the read got anywhere."""

        def on_readable(_mask):
            try:
                data = os.read(fd, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:  # EIO: a terminal whose last user has gone
                data = b""
            if not data:
                self.close_pipe(proc, fd)
                return True
            stream = proc.pipes.get(fd)
            if stream is None:
                return True
            index = stream - 1
            proc.totals[index] += len(data)
            if proc.cap is not None:
                room = proc.cap - proc.forwarded[index]
                if room <= 0:
                    return True  # drained and counted, not forwarded
                data = data[:room]
            proc.forwarded[index] += len(data)
            if proc.collected is not None:
                proc.collected[index] += data
            else:
                self.emit(proc, {wire.EV: wire.Ev.OUT, wire.ID: proc.id, wire.Out.STREAM: stream}, data)
            return True

        return on_readable

    def emit(self, proc, header, body=b""):
        conn = proc.conn
        if conn is not None and not conn.closed:
            conn.send(header, body)
            if len(conn.wbuf) > PAUSE_ABOVE and not proc.paused:
                self.set_paused(proc, True)
        # With nobody connected this is an exec being killed (only handed-off processes are
        # kept, and their output never passes through here): its output has no reader.

    def watch_pipes(self, proc):
        """Watch the process's pipes from now on."""
        proc.listen_at = None
        for fd in proc.pipes:
            self.sel.register(fd, selectors.EVENT_READ, proc.readers[fd])

    def set_paused(self, proc, paused):
        proc.paused = paused
        for fd in proc.pipes:
            try:
                if paused:
                    self.sel.unregister(fd)
                else:
                    self.sel.register(fd, selectors.EVENT_READ, proc.readers[fd])
            except (KeyError, ValueError):
                pass

    def resume_paused(self, conn):
        """The connection's queue went down: read the pipes it paused again."""
        for proc in self.procs.values():
            if proc.paused and proc.conn is conn:
                self.set_paused(proc, False)

    def close_pipe(self, proc, fd):
        if proc.pipes.pop(fd, None) is None:
            return
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        # Never os.close() here: Popen's file object would close the number again later, by
        # then possibly another process's pipe.
        proc.files.pop(fd).close()
        proc.readers.pop(fd, None)
        if fd == proc.tty_fd:
            proc.tty_fd = None  # the number may be reused: never resize through it again
        if proc.status is not None and not proc.pipes:
            self.procs.finish(proc)

    def drain_exited(self, proc):
        """Read what an exited process left in its pipes now, up to their end: most commands
        end without background children, and their exit can then go out in this very loop
        iteration instead of the next. A few reads per pipe at most; the rest waits its turn."""
        for fd in list(proc.pipes):
            for _ in range(DRAIN_READS):
                if proc.paused or fd not in proc.pipes or not proc.readers[fd](selectors.EVENT_READ):
                    break
        if proc.pipes and proc.listen_at is not None:
            self.watch_pipes(proc)  # background children still hold them: watch from now on
