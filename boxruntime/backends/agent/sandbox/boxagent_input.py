"""Feeding a command's stdin and sizing its terminal: the ``input`` and ``resize`` requests
(stdlib only, Python >= 3.8).

The daemon sends ``input`` requests (data, and ``eof`` to close the stdin after it); each is
answered once its data is in the command's pipe or terminal, so the daemon never has more in
flight than the command has read. A command that exits or closes its input fails the requests
still waiting, which tells the daemon to stop sending.

A command on a terminal (``tty``) is written through a duplicate of the terminal's master side
and can be resized (``resize``); its output is read from the master itself (boxagent_output).
"""

import os
import selectors

import boxagent_wire as wire
from boxagent_spawn import set_window


def _reply(conn, token, error=None):
    if conn.closed:
        return
    frame = {wire.EV: wire.Ev.REPLY, wire.ID: token}
    if error is not None:
        frame[wire.ERROR] = error
        frame[wire.CODE] = "EPIPE"
    conn.send(frame)


class InputFeed:
    def __init__(self, sel, procs):
        self.sel = sel
        self.procs = procs  # the process table, where requests find their command

    def register(self, on):
        on(wire.Op.INPUT, self.op_input)
        on(wire.Op.RESIZE, self.op_resize)

    def keep_stdin(self, proc, fileobj):
        """Write the process's input to ``fileobj`` from now on (without ever blocking)."""
        os.set_blocking(fileobj.fileno(), False)
        proc.stdin_file = fileobj

    def op_input(self, conn, header, body):
        proc = self.procs.get(header.get(wire.TARGET))
        token = header.get(wire.ID)
        if proc is not None and proc.stdin_file is None and proc.keep and header.get(wire.Input.EOF) and not body:
            # A kept process's stdin is the daemon's to write; the agent's copy (of passed
            # pipes; none of stdio sockets) only holds it open across daemons. The daemon closed
            # its own: close this one, and stdin ends.
            proc.close_kept(0)
            _reply(conn, token)
            return
        if proc is None or proc.stdin_file is None:
            _reply(conn, token, "the command takes no more input")
            return
        proc.inbuf += body
        proc.queued += len(body)
        proc.acks.append((conn, token, proc.queued))
        if header.get(wire.Input.EOF):
            proc.stdin_eof = True
        self.write_input(proc)

    def op_resize(self, conn, header, _body):
        proc = self.procs.get(header.get(wire.TARGET))
        token = header.get(wire.ID)
        if proc is None or proc.tty_fd is None:
            conn.send(
                {wire.EV: wire.Ev.REPLY, wire.ID: token, wire.ERROR: "the command has no terminal", wire.CODE: "ENOTTY"}
            )
            return
        set_window(proc.tty_fd, header.get(wire.Window.ROWS, 24), header.get(wire.Window.COLS, 80))
        conn.send({wire.EV: wire.Ev.REPLY, wire.ID: token})

    def write_input(self, proc):
        fileobj = proc.stdin_file
        if fileobj is None:
            return
        while proc.inbuf:
            try:
                written = os.write(fileobj.fileno(), proc.inbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close_stdin(proc, "the command closed its input")
                return
            del proc.inbuf[:written]
            proc.written += written
        while proc.acks and proc.acks[0][2] <= proc.written:
            conn, token, _ = proc.acks.pop(0)
            _reply(conn, token)
        if proc.inbuf:
            self._watch_stdin(proc, True)
        else:
            self._watch_stdin(proc, False)
            if proc.stdin_eof:
                self.close_stdin(proc)

    def _watch_stdin(self, proc, writable):
        if writable == proc.stdin_watched:
            return
        fd = proc.stdin_file.fileno()
        if writable:
            self.sel.register(fd, selectors.EVENT_WRITE, lambda _mask: self.write_input(proc))
        else:
            self.sel.unregister(fd)
        proc.stdin_watched = writable

    def close_stdin(self, proc, error=None):
        """Close the process's input; requests still waiting get ``error`` (None: they are done)."""
        fileobj = proc.stdin_file
        if fileobj is None:
            return
        self._watch_stdin(proc, False)
        proc.stdin_file = None
        try:
            fileobj.close()
        except OSError:
            pass
        del proc.inbuf[:]
        acks, proc.acks = proc.acks, []
        for conn, token, _ in acks:
            _reply(conn, token, error)
