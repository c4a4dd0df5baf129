"""Starting commands: the ``spawn`` request, and the ``take_fds`` one that hands a started
command's stdio to the daemon (stdlib only, Python >= 3.8).

A command starts in a spare shell when one can take it (boxagent_spare), else fresh. A fresh
spawn serves what a spare shell cannot take: argv commands, long scripts (through a
memfd, never argv: ARG_MAX), a stdin, a terminal, environment names the shell cannot export.
A terminal is the agent's (``tty``: it reads the output and writes the input, for interactive
exec) or the daemon's (``pty`` with ``handoff``: its master side is handed over).

Shell commands run as ``sh`` (argv[0]), so the shell's own errors read
``sh: 1: nosuchcmd: not found`` and never name a file of ours.
"""

import fcntl
import os
import struct
import subprocess
import termios

import boxagent_wire as wire
from boxagent_proc import Proc, expendable
from boxagent_spare import SHELL, SHELL_NAME, group
from boxagent_stdio import StdioError

SCRIPT_INLINE_MAX = 64 * 1024  # longer commands go through a memfd, not argv (ARG_MAX)


class SpawnError(Exception):
    """The command could not be started; the message says why."""


def _failed(conn, proc_id, error):
    conn.send({wire.EV: wire.Ev.FAILED, wire.ID: proc_id, wire.ERROR: error})


def _workdir_error(header, cwd):
    """Why the command cannot start in ``cwd`` (made if missing and asked for), or None."""
    if os.path.isdir(cwd):
        return None
    error = "workdir %s is not a directory" % cwd
    if header.get(wire.Spawn.MAKE_CWD, True):
        try:
            os.makedirs(cwd, exist_ok=True)
            error = None if os.path.isdir(cwd) else error
        except OSError as exc:
            error = "workdir %s cannot be created: %s" % (cwd, exc.strerror)
    return error


class Launcher:
    """Starts commands and wires their stdio: to the output pump and the input feed, or kept
    for the daemon to take (``handoff``)."""

    def __init__(self, base_env, procs, spares, output, inputs, stdio):
        self.base_env = base_env
        self.stdio = stdio
        self.procs = procs
        self.spares = spares
        self.output = output
        self.input = inputs

    def register(self, on):
        on(wire.Op.SPAWN, self.op_spawn)
        on(wire.Op.TAKE_FDS, self.op_take_fds)

    def op_spawn(self, conn, header, body):
        proc_id = header[wire.ID]
        if self.procs.get(proc_id) is not None:
            raise ValueError("process id %r already in use" % proc_id)
        cwd = header.get(wire.Spawn.CWD) or "/"
        error = _workdir_error(header, cwd)
        if error is not None:
            _failed(conn, proc_id, error)
            return
        if header.get(wire.Spawn.TTY) and header.get(wire.Spawn.HANDOFF):
            _failed(conn, proc_id, "a tty terminal cannot be handed over (ask for pty)")
            return
        self.spares.expect(header)
        master = None
        try:
            popen = self.spares.take(header, body)
            if popen is None and header.get(wire.Spawn.TTY):
                popen, master = tty_spawn(self.base_env, header, body, cwd)
            elif popen is None:
                self.spares.discard_unexpected()
                popen = self._fresh(header, body, cwd)
        except (SpawnError, StdioError) as exc:
            _failed(conn, proc_id, str(exc))
            return
        proc = Proc(popen.pid, popen, conn, header)
        self.procs.add(proc)
        if header.get(wire.Spawn.HANDOFF):
            # The daemon takes the pipes themselves (op take_fds): its data need not pass
            # through this process. The agent still reaps, signals and reports the exit.
            proc.handoff = [popen.stdin, popen.stdout, popen.stderr]
            if proc.keep and master is None:
                for pipe in (popen.stdout, popen.stderr):
                    widen_pipe(pipe)
        elif header.get(wire.Spawn.STDIO):
            pass  # its stdio are the daemon's own sockets: nothing passes through here
        elif master is not None:
            proc.tty_fd = master
            self.input.keep_stdin(proc, open(os.dup(master), "wb", buffering=0))  # noqa: SIM115
            self.output.read_output_of(proc, ((1, open(master, "rb", buffering=0)),))  # noqa: SIM115
        else:
            if popen.stdin is not None:
                self.input.keep_stdin(proc, popen.stdin)
            self.output.read_output_of(proc, ((1, popen.stdout), (2, popen.stderr)))
        if header.get(wire.Spawn.NOTIFY_STARTED):
            conn.send({wire.EV: wire.Ev.STARTED, wire.ID: proc_id, wire.Started.PID: popen.pid})

    def _fresh(self, header, body, cwd):
        tokens = header.get(wire.Spawn.STDIO)
        if not tokens:
            return fresh_spawn(self.base_env, header, body, cwd)
        stdio = self.stdio.take(tokens)
        try:
            return fresh_spawn(self.base_env, header, body, cwd, stdio)
        finally:
            for sock in stdio:
                if sock is not None:
                    sock.close()  # the process holds its own copies now

    def op_take_fds(self, conn, header, _body):
        """Pass a handed-off process's stdin, stdout and stderr to the daemon (SCM_RIGHTS).

        A kept process (``keep_on_disconnect``) keeps the agent's copies: if the daemon dies,
        its stdin does not reach EOF, its output waits in the pipes, and the next daemon takes
        the same pipes again. A pipe already closed by the daemon (stdin at EOF) is handed over
        as a fresh, empty one in its place: the number of descriptors stays the same."""
        proc = self.procs.get(header.get(wire.TARGET))
        token = header.get(wire.ID)
        files = None if proc is None else (proc.handoff or proc.kept)
        if not files or files[1] is None:
            conn.send({wire.EV: wire.Ev.REPLY, wire.ID: token, wire.ERROR: "no pipes to hand over"})
            return
        first = proc.handoff is not None
        proc.handoff = None
        closed_stdin = None
        if not first and files[0] is None and proc.popen.stdin is not None:
            # stdin was closed on request; hand over a write end whose reader is already gone.
            read_end, write_end = os.pipe()
            os.close(read_end)
            closed_stdin = write_end
        fds = [f.fileno() for f in files if f is not None]
        if closed_stdin is not None:
            fds.insert(0, closed_stdin)
        has_stdin = files[0] is not None or closed_stdin is not None
        conn.send_fds({wire.EV: wire.Ev.REPLY, wire.ID: token, wire.TakeFds.STDIN: has_stdin}, fds)
        if closed_stdin is not None:
            os.close(closed_stdin)
        if proc.keep:
            proc.kept = list(files)
        else:
            for f in files:
                if f is not None:
                    f.close()  # the daemon holds its own copies now
        if proc.status is not None:
            self.procs.finish(proc)


PIPE_KEEP_BYTES = 1 << 20  # what a kept process's pipe holds while no daemon reads it
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def widen_pipe(pipe):
    """Let a kept process's output pipe hold ``PIPE_KEEP_BYTES`` (best effort: an unprivileged
    user over the kernel's pipe budget keeps the default 64 KiB). A process that fills it while
    no daemon reads waits, and loses nothing."""
    if pipe is None:
        return
    try:
        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, PIPE_KEEP_BYTES)
    except OSError:
        pass


def fresh_spawn(base_env, header, body, cwd, stdio=None):
    """A Popen for the spawn request ``header`` (its script in ``body``), in ``cwd``.

    With ``stdin`` the command gets a pipe the agent (``op_input``) or, with ``handoff``, the
    daemon writes to; otherwise /dev/null. With ``stdio`` (sockets for stdin or None, stdout,
    stderr: boxagent_stdio) those sockets are its stdio instead."""
    env = dict(base_env)
    env.update(header.get(wire.Spawn.ENV) or {})
    wants_stdin = bool(header.get(wire.Spawn.STDIN))
    argv, script_fd = command_argv(header, body, wants_stdin)
    if header.get(wire.Spawn.PTY) and header.get(wire.Spawn.HANDOFF):
        if script_fd is not None:
            os.close(script_fd)
            raise SpawnError("a command on a terminal must be at most %d bytes" % SCRIPT_INLINE_MAX)
        try:
            return pty_spawn(argv, cwd, env, header[wire.Spawn.PTY])
        except OSError as exc:
            raise SpawnError("cannot start %s on a terminal: %s" % (argv[0], exc.strerror)) from None
    stdin = subprocess.PIPE if wants_stdin else subprocess.DEVNULL
    pass_fds = ()
    if script_fd is not None:
        if wants_stdin:
            pass_fds = (script_fd,)  # sourced by number; the pipe is the stdin
        else:
            stdin = script_fd  # the script of ``sh -s``
    stdout = stderr = subprocess.PIPE
    if stdio is not None:
        stdin = stdio[0] if stdio[0] is not None else stdin
        stdout, stderr = stdio[1], stdio[2]
    try:
        return subprocess.Popen(
            argv,
            executable=None if header.get(wire.Spawn.ARGV) else SHELL,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=pass_fds,
            start_new_session=True,
            close_fds=True,
            preexec_fn=expendable,  # the agent is single-threaded: safe here
        )
    except OSError as exc:
        raise SpawnError("cannot start %s: %s" % (argv[0], exc.strerror)) from None
    finally:
        if script_fd is not None:
            os.close(script_fd)


def command_argv(header, body, wants_stdin):
    """argv for the request, and the memfd holding a long script (or None).

    A long script is read by ``sh -s`` from the memfd as its stdin, the command itself reading
    /dev/null (``group``). One that also wants a stdin pipe is sourced from the memfd instead,
    the one case where the shell's errors name ``/proc/self/fd/N``."""
    if header.get(wire.Spawn.ARGV):
        return [str(a) for a in header[wire.Spawn.ARGV]], None
    if len(body) <= SCRIPT_INLINE_MAX:
        return [SHELL_NAME, "-c", body.decode("utf-8", "surrogateescape")], None
    fd = os.memfd_create("boxagent-script", 0)
    os.write(fd, body if wants_stdin else group(body))
    os.lseek(fd, 0, os.SEEK_SET)
    if wants_stdin:
        return [SHELL_NAME, "-c", ". /proc/self/fd/%d" % fd], fd
    return [SHELL_NAME, "-s"], fd


def set_window(fd, rows, cols):
    """The terminal size a program in the sandbox sees (and is sent SIGWINCH for)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", int(rows), int(cols), 0, 0))


def _take_terminal():  # runs in the child between fork and exec: after setsid, before exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    expendable()


def tty_spawn(base_env, header, body, cwd):
    """A command on a new pseudo-terminal, as its session leader with the terminal as its
    controlling one (job control and ^C work as in a shell). Returns the Popen and the master
    side, which carries both the command's output and its input."""
    size = header.get(wire.Spawn.TTY) or {}
    master, slave = os.openpty()
    argv = [SHELL]
    try:
        set_window(master, size.get(wire.Window.ROWS, 24), size.get(wire.Window.COLS, 80))
        env = dict(base_env)
        env.setdefault("TERM", "xterm")
        env.update(header.get(wire.Spawn.ENV) or {})
        if header.get(wire.Spawn.ARGV):
            argv, executable = [str(a) for a in header[wire.Spawn.ARGV]], None
        else:
            argv, executable = [SHELL_NAME, "-c", body.decode("utf-8", "surrogateescape")], SHELL
        popen = subprocess.Popen(
            argv,
            executable=executable,
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_take_terminal,  # the agent is single-threaded: safe here
        )
    except OSError as exc:
        os.close(master)
        raise SpawnError("cannot start %s on a terminal: %s" % (argv[0], exc.strerror)) from None
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return popen, master


def pty_spawn(argv, cwd, env, size):
    """A command on a new terminal (``size`` = [cols, rows]) whose pipes are handed to the daemon,
    in a session of its own. Its stdin and stdout are the terminal's master side; its stderr,
    which a terminal merges into stdout, is an empty pipe."""
    master, slave = os.openpty()
    try:
        set_window(master, size[1], size[0])
        popen = subprocess.Popen(
            argv,
            executable=SHELL if argv and argv[0] == SHELL_NAME else None,
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_take_terminal,  # the agent is single-threaded: safe here
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    empty_r, empty_w = os.pipe()
    os.close(empty_w)
    popen.stdin = os.fdopen(os.dup(master), "wb", buffering=0)
    popen.stdout = os.fdopen(master, "rb", buffering=0)
    popen.stderr = os.fdopen(empty_r, "rb", buffering=0)
    return popen


def close_on_exec_inherited():
    """Whatever descriptors the agent inherited (beyond 0-2) must not reach the commands it
    starts: spares are made with posix_spawn, which closes only close-on-exec descriptors."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, closed by now
