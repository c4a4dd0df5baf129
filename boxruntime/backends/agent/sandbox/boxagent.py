#!/usr/bin/env python3
"""boxruntime in-sandbox agent: runs commands for the daemon, inside the sandbox.

Stdlib only, Python >= 3.8; mounted read-only into every sandbox and run as its init process.
It listens on a unix socket (in a directory the daemon bind-mounts from the host), so the
daemon pays one framed request per command instead of a ``docker exec``.

Wire format, both ways: ``>II`` (header length, body length), a JSON header, raw body bytes.
Requests carry ``op``; events carry ``ev``. Every process has a daemon-chosen string ``id``.
A spawn with ``collect`` sends no output frames: its output (up to ``output_cap`` per stream)
comes with the exit event, one frame per command, which halves the wake-ups of a plain exec.

As PID 1 it reaps every zombie (``wait4(-1)``, which also yields each command's CPU time and
peak RSS), forwards SIGTERM/SIGINT to its children, and kills a command's whole process group
and session when its timeout expires. With ``--host`` it runs directly on a host instead (the
unsafe ``host`` backend): see boxagent_host.
"""

import os
import selectors
import signal
import socket
import sys

import boxagent_fs
import boxagent_host
import boxagent_spare
import boxagent_spawn
import boxagent_stdio
from boxagent_conn import Conn
from boxagent_output import OutputPipes
from boxagent_proc import ExitWatch, OomCounter, Proc, kill_rest, kill_tree, now

VERSION = 3
EXIT_GRACE_SEC = 0.2  # after the main process exits, how long background children may hold its pipes
FS_MAX_BYTES = 8 << 20  # one file operation moves at most this much; larger files go in pieces


class Agent(OutputPipes):
    def __init__(self, socket_path, host=False):
        self.socket_path = socket_path
        self.host = boxagent_host.HostMode() if host else None
        self.childless = False  # the last reap found no child at all, running or not
        self.sel = selectors.DefaultSelector()
        self.conns = set()
        self.procs = {}  # id -> Proc
        self.by_pid = {}  # pid -> Proc
        self.stopping = False
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("BOXAGENT_")}
        self.dirty = set()  # connections with frames waiting to be written
        self.spare = None  # a shell started ahead of time for the next command
        self.oom = OomCounter(enabled=not host)
        self.exits = ExitWatch(self.sel)
        self.stdio = boxagent_stdio.StdioSockets()

    # ── lifecycle ────────────────────────────────────────────────────────

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
        detached = [p.id for p in self.procs.values() if p.conn is None]
        conn.send({"ev": "hello", "version": VERSION, "pid": os.getpid(), "detached": detached})

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
        for proc in list(self.procs.values()):
            if proc.conn is conn:
                proc.conn = None
                if not proc.keep:  # nobody will read an exec's result: end it
                    proc.cancelled = True
                    kill_tree(proc, signal.SIGKILL)

    def update_conn_interest(self, conn):
        if conn.closed:
            return
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.wbuf else 0)
        try:
            self.sel.modify(conn.sock, mask, conn.on_event)
        except (KeyError, ValueError):
            pass

    def run(self):
        # Exits wake the loop through pidfds (ExitWatch), else through SIGCHLD. Orphans that are
        # reparented to us are reaped on the next loop iteration either way.
        if not self.exits.enabled:
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
            return self.childless
        return not self.procs

    def on_stop_signal(self, signum, _frame):
        self.stopping = True
        if self.spare is not None:
            self.spare.discard()
            self.spare = None
        for proc in list(self.procs.values()):
            kill_tree(proc, signal.SIGTERM)
        if self.host is not None:
            self.host.stop()

    def drain_wakeup(self, fd):
        try:
            while os.read(fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def sel_once(self):
        timeout = self.next_timeout()
        for key, mask in self.sel.select(timeout):
            key.data(mask)
        self.reap()
        self.check_times()
        if self.host is not None:
            self.host.tick()
        self.flush_all()
        if self.spare is None and not self.stopping and self.idle():
            self.make_spare()  # pay for the next command's shell now, while nothing waits on us

    def idle(self):
        """No command in flight and nothing left to send: a fork now delays nobody. (Long-lived
        processes the daemon reads directly do not count.)"""
        if any(c.wbuf for c in self.conns):
            return False
        return all(p.keep and p.status is None and not p.pipes for p in self.procs.values())

    def flush_all(self):
        dirty, self.dirty = self.dirty, set()
        for conn in dirty:
            conn.flush()

    def make_spare(self):
        try:
            self.spare = boxagent_spare.SpareShell(self.base_env)
        except OSError:
            self.spare = None

    def next_timeout(self):
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
        if self.host is not None and self.host.next_moment() is not None:
            moments.append(self.host.next_moment())
        if not moments:
            return 1.0  # a periodic wake-up also catches a SIGCHLD lost to a race
        return max(0.0, min(moments) - now())

    # ── requests ─────────────────────────────────────────────────────────

    def handle(self, conn, header, body):
        op = header.get("op")
        handler = getattr(self, "op_" + str(op), None)
        if handler is None:
            conn.send({"ev": "error", "id": header.get("id"), "error": "unknown op %r" % op})
            return
        try:
            handler(conn, header, body)
        except Exception as exc:  # a bad request must never take the agent down
            conn.send({"ev": "error", "id": header.get("id"), "error": "%s: %s" % (type(exc).__name__, exc)})

    def op_ping(self, conn, header, _body):
        conn.send({"ev": "reply", "id": header.get("id"), "procs": len(self.procs)})

    def op_fs(self, conn, header, body):
        """Request/reply file operations; small and local, so they run inline."""
        operation = boxagent_fs.OPERATIONS.get(header.get("fs"))
        roots = header.get("roots") or ["/"]
        try:
            if operation is None:
                raise boxagent_fs.FsError("unknown file operation %r" % header.get("fs"))
            reply, data = operation(header, body, roots, FS_MAX_BYTES)
        except boxagent_fs.FsError as exc:
            conn.send({"ev": "reply", "id": header.get("id"), "error": str(exc), "code": exc.code})
            return
        reply["ev"] = "reply"
        reply["id"] = header.get("id")
        conn.send(reply, data)

    def op_spawn(self, conn, header, body):
        pid_key = header["id"]
        if pid_key in self.procs:
            raise ValueError("process id %r already in use" % pid_key)
        cwd = header.get("cwd") or "/"
        if not os.path.isdir(cwd):
            error = "workdir %s is not a directory" % cwd
            if header.get("make_cwd", True):
                try:
                    os.makedirs(cwd, exist_ok=True)
                    error = None if os.path.isdir(cwd) else error
                except OSError as exc:
                    error = "workdir %s cannot be created: %s" % (cwd, exc.strerror)
            if error is not None:
                conn.send({"ev": "failed", "id": pid_key, "error": error})
                return
        script = self.spare.script_for(header, body) if self.spare is not None else None
        if script is not None:
            popen = self.spare.hand_over(script)
            self.spare = None
        else:
            try:
                stdio = self.stdio.take(header["stdio"]) if header.get("stdio") else None
                try:
                    popen = boxagent_spawn.fresh_spawn(self.base_env, header, body, cwd, stdio)
                finally:
                    for sock in stdio or ():
                        if sock is not None:
                            sock.close()  # the process holds its own copies now
            except (boxagent_spawn.SpawnError, boxagent_stdio.StdioError) as exc:
                conn.send({"ev": "failed", "id": pid_key, "error": str(exc)})
                return
        proc = Proc(popen.pid, popen, conn, header)
        self.procs[pid_key] = proc
        self.by_pid[popen.pid] = proc
        self.exits.watch(popen.pid)
        if header.get("handoff"):
            # The daemon takes the pipes themselves (op take_fds): its data need not pass
            # through this process. The agent still reaps, signals and reports the exit.
            proc.handoff = [popen.stdin, popen.stdout, popen.stderr]
        elif not header.get("stdio"):
            self.read_output_of(proc, popen)
        if header.get("notify_started"):
            conn.send({"ev": "started", "id": pid_key, "pid": popen.pid})

    def op_take_fds(self, conn, header, _body):
        """Pass a handed-off process's stdin, stdout and stderr to the daemon (SCM_RIGHTS)."""
        proc = self.procs.get(header.get("target"))
        if proc is None or not proc.handoff:
            conn.send({"ev": "reply", "id": header.get("id"), "error": "no pipes to hand over"})
            return
        files, proc.handoff = proc.handoff, None
        fds = [f.fileno() for f in files if f is not None]
        conn.send_fds({"ev": "reply", "id": header.get("id"), "stdin": files[0] is not None}, fds)
        for f in files:
            if f is not None:
                f.close()  # the daemon holds its own copies now
        if proc.status is not None:
            self.finish(proc)

    def op_stdio(self, conn, header, _body):
        """This connection becomes a stdio stream of a process spawned later (boxagent_stdio)."""
        conn.send({"ev": "reply", "id": header.get("id")})
        sock = conn.detach()
        if sock is not None:
            self.conns.discard(conn)
            self.sel.unregister(sock)
            self.stdio.keep(str(header.get("id")), sock)

    def op_signal(self, conn, header, _body):
        proc = self.procs.get(header["id"])
        if proc is not None:
            sig = int(header.get("signal", signal.SIGTERM))
            if header.get("cancel"):
                proc.cancelled = True
            kill_tree(proc, sig)

    def op_attach(self, conn, header, _body):
        proc = self.procs.get(header["id"])
        if proc is None:
            conn.send({"ev": "failed", "id": header["id"], "error": "no such process"})
            return
        proc.conn = conn
        conn.send({"ev": "attached", "id": proc.id})
        if proc.status is not None:
            self.finish(proc)  # it exited while nobody was connected: report it now

    # ── processes ────────────────────────────────────────────────────────

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
                if self.spare is not None and pid == self.spare.pid:
                    self.spare.discard()  # died before it was used; another is made when idle
                    self.spare = None
                continue  # an orphan reparented to us; reaping it is all it needs
            proc.status = status
            proc.rusage = rusage
            proc.exited_at = now()
            proc.popen.returncode = status  # keep Popen from waiting on a reaped pid
            self.drain_exited(proc)
            if not proc.pipes:
                self.finish(proc)

    def check_times(self):
        t = now()
        for proc in list(self.procs.values()):
            if proc.listen_at is not None and t >= proc.listen_at:
                self.watch_pipes(proc)
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
                    self.close_pipe(proc, fd)

    def finish(self, proc):
        if proc.kill_at is not None:
            return  # a timed-out command is reported once its grace is over and the rest killed
        if proc.handoff is not None:
            return  # exited before the daemon took its pipes: report it once they are taken
        if proc.conn is None and proc.keep:
            return  # nobody to tell yet: op_attach reports it
        if self.procs.pop(proc.id, None) is None:
            return
        if proc.conn is not None:
            proc.conn.send(*proc.exit_frame(self.oom))


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
