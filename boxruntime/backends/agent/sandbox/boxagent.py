#!/usr/bin/env python3
"""boxruntime in-sandbox agent: runs commands for the daemon, inside the sandbox.

Stdlib only, Python >= 3.8; mounted read-only into every sandbox and run as its init process.
It listens on a unix socket (in a directory the daemon bind-mounts from the host), so the
daemon pays one framed request per command instead of a ``docker exec``. The frames, their
names and fields are declared in boxagent_wire. A spawn with ``collect`` sends no output
frames: its output comes with the exit event, one frame per command, which halves the
wake-ups of a plain exec.

This module is the event loop: the listening socket and connections, the dispatch of requests
to the parts that each own one job and register their operations here:

- boxagent_procs: the process table, reaping, deadlines, exit events (signal, attach);
- boxagent_spawn: starting commands and wiring their stdio (spawn, take_fds);
  boxagent_stdio: the daemon's sockets kept as stdio of a later spawn (stdio), under gVisor;
- boxagent_output: pumping their output; boxagent_input: their stdin and terminal (input, resize);
- boxagent_spare: the spare shells started ahead of the next commands;
- boxagent_fs: file operations (fs); boxagent_watch: directory watches (watch, unwatch);
- boxagent_host: what differs when run on a host with ``--host`` (the unsafe ``host`` backend).

As PID 1 it forwards SIGTERM/SIGINT to its children (and on a host, takes its tree down).
"""

import os
import selectors
import signal
import socket
import sys

import boxagent_host
import boxagent_spawn
import boxagent_wire as wire
from boxagent_conn import Conn
from boxagent_fs import FileOps
from boxagent_input import InputFeed
from boxagent_output import OutputPump
from boxagent_proc import now
from boxagent_procs import OomCounter, ProcessTable
from boxagent_spare import SparePool
from boxagent_stdio import StdioSockets
from boxagent_watch import DirectoryWatches

IDLE_WAKE_SEC = 1.0  # a periodic wake-up also catches a SIGCHLD lost to a race


class Agent:
    def __init__(self, socket_path, host=False):
        self.socket_path = socket_path
        self.sel = selectors.DefaultSelector()
        self.conns = set()
        self.dirty = set()  # connections with frames waiting to be written
        self.stopping = False
        self.ops = {}  # request name -> handler(conn, header, body)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("BOXAGENT_")}
        # The parts, each owning one job; see the module doc.
        self.host = boxagent_host.HostMode() if host else None
        self.spares = SparePool(base_env)
        self.procs = ProcessTable(self.sel, OomCounter(enabled=not host), self.spares)
        self.output = OutputPump(self.sel, self.procs)
        self.input = InputFeed(self.sel, self.procs)
        self.procs.drives(self.output, self.input)
        self.watches = DirectoryWatches(self.sel)
        self.stdio = StdioSockets()
        launcher = boxagent_spawn.Launcher(base_env, self.procs, self.spares, self.output, self.input, self.stdio)
        self.on(wire.Op.PING, self.op_ping)
        self.on(wire.Op.STDIO, self.op_stdio)
        for part in (self.procs, launcher, self.input, FileOps(self.watches), self.watches):
            part.register(self.on)

    def on(self, op, handler):
        """Dispatch requests named ``op`` to ``handler``."""
        if op in self.ops:
            raise ValueError("two handlers for op %r" % op)
        self.ops[op] = handler

    # ── connections ──────────────────────────────────────────────────────

    def listen(self):
        directory = os.path.dirname(self.socket_path)
        tmp = os.path.join(directory, ".agent.%d.sock" % os.getpid())
        for path in (tmp, self.socket_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(tmp)
        server.listen(16)
        try:
            # Appear under the final name only once listening, so a connect never races the bind.
            os.rename(tmp, self.socket_path)
        except PermissionError:
            # gVisor cannot rename (nor remove) a socket it made on the host: bind the final name
            # itself (the daemon retries a refused connect until this one listens).
            server.close()
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(self.socket_path)
            server.listen(16)
        server.setblocking(False)
        self.sel.register(server, selectors.EVENT_READ, self.on_accept)
        self.server = server

    def on_accept(self, _mask):
        try:
            sock, _ = self.server.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn = Conn(self, sock)
        self.conns.add(conn)
        self.sel.register(sock, selectors.EVENT_READ, conn.on_event)
        conn.send(
            {
                wire.EV: wire.Ev.HELLO,
                wire.Hello.VERSION: wire.VERSION,
                wire.Hello.PID: os.getpid(),
                wire.Hello.DETACHED: self.procs.detached(),
            }
        )

    def drop_conn(self, conn):
        if conn.closed:
            return
        conn.closed = True
        self.conns.discard(conn)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        self.watches.conn_lost(conn)
        self.procs.conn_lost(conn)

    def op_stdio(self, conn, header, _body):
        """This connection becomes a stdio stream of a process spawned later (boxagent_stdio)."""
        token = header.get(wire.ID)
        conn.send({wire.EV: wire.Ev.REPLY, wire.ID: token})
        self.dirty.discard(conn)
        sock = conn.detach()
        if sock is not None:
            self.conns.discard(conn)
            self.sel.unregister(sock)
            self.stdio.keep(str(token), sock)

    def update_conn_interest(self, conn):
        if conn.closed:
            return
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.wbuf else 0)
        try:
            self.sel.modify(conn.sock, mask, conn.on_event)
        except (KeyError, ValueError):
            pass

    def resume_paused(self, conn):
        self.output.resume_paused(conn)

    def flush_all(self):
        dirty, self.dirty = self.dirty, set()
        for conn in dirty:
            conn.flush()

    # ── the loop ─────────────────────────────────────────────────────────

    def run(self):
        # Exits wake the loop through pidfds (ExitWatch), else through SIGCHLD. Orphans that are
        # reparented to us are reaped on the next loop iteration either way.
        if not self.procs.exits.enabled:
            signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_stop_signal)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(wake_r, selectors.EVENT_READ, lambda _m: self.drain_wakeup(wake_r))
        self.listen()
        while not self.done():
            self.sel_once()
        sys.exit(0)

    def done(self):
        if not self.stopping:
            return False
        if self.host is not None:
            # Everything below a subreaper is its child or a child's descendant: no child left
            # means nothing of this agent is left on the host.
            return self.procs.childless
        return not len(self.procs)

    def on_stop_signal(self, signum, _frame):
        self.stopping = True
        self.spares.discard_all()
        self.procs.signal_all(signal.SIGTERM)
        if self.host is not None:
            self.host.stop()

    def drain_wakeup(self, fd):
        try:
            while os.read(fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def sel_once(self):
        for key, mask in self.sel.select(self.next_timeout()):
            key.data(mask)
        self.procs.reap()
        self.procs.check_times()
        if self.host is not None:
            self.host.tick()
        self.flush_all()
        if self.spares.short() and not self.stopping and self.idle():
            self.spares.refill()  # pay for the next command's shell now, while nothing waits on us

    def idle(self):
        """No command in flight and nothing left to send: a fork now delays nobody. (Long-lived
        processes the daemon reads directly do not count.)"""
        if any(c.wbuf for c in self.conns):
            return False
        return self.procs.quiet()

    def next_timeout(self):
        moments = [self.procs.next_moment()]
        if self.host is not None:
            moments.append(self.host.next_moment())
        moments = [m for m in moments if m is not None]
        if not moments:
            return IDLE_WAKE_SEC
        return max(0.0, min(moments) - now())

    # ── requests ─────────────────────────────────────────────────────────

    def handle(self, conn, header, body):
        op = header.get(wire.OP)
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            conn.send({wire.EV: wire.Ev.ERROR, wire.ID: header.get(wire.ID), wire.ERROR: "unknown op %r" % op})
            return
        try:
            handler(conn, header, body)
        except Exception as exc:  # a bad request must never take the agent down
            conn.send(
                {wire.EV: wire.Ev.ERROR, wire.ID: header.get(wire.ID), wire.ERROR: "%s: %s" % (type(exc).__name__, exc)}
            )

    def op_ping(self, conn, header, _body):
        conn.send({wire.EV: wire.Ev.REPLY, wire.ID: header.get(wire.ID), wire.Ping.PROCS: len(self.procs)})


def main(argv):
    args = argv[1:]
    host = "--host" in args
    args = [a for a in args if a != "--host"]
    if len(args) != 1:
        sys.stderr.write("usage: boxagent.py [--host] SOCKET_PATH\n")
        return 2
    os.umask(0o022)
    boxagent_spawn.close_on_exec_inherited()
    Agent(args[0], host=host).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
