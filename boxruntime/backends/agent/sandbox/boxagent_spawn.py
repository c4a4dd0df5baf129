"""Starting a command without a spare shell, and keeping the agent's own descriptors out of
every command (stdlib only, Python >= 3.8).

A fresh spawn serves what a spare shell cannot take: argv commands, long scripts (through a
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

from boxagent_spare import SHELL, SHELL_NAME, group

SCRIPT_INLINE_MAX = 64 * 1024  # longer commands go through a memfd, not argv (ARG_MAX)


class SpawnError(Exception):
    """The command could not be started; the message says why."""


def fresh_spawn(base_env, header, body, cwd):
    """A Popen for the spawn request ``header`` (its script in ``body``), in ``cwd``.

    With ``stdin`` the command gets a pipe the agent (``op_input``) or, with ``handoff``, the
    daemon writes to; otherwise /dev/null."""
    env = dict(base_env)
    env.update(header.get("env") or {})
    wants_stdin = bool(header.get("stdin"))
    argv, script_fd = command_argv(header, body, wants_stdin)
    if header.get("pty") and header.get("handoff"):
        if script_fd is not None:
            os.close(script_fd)
            raise SpawnError("a command on a terminal must be at most %d bytes" % SCRIPT_INLINE_MAX)
        try:
            return pty_spawn(argv, cwd, env, header["pty"])
        except OSError as exc:
            raise SpawnError("cannot start %s on a terminal: %s" % (argv[0], exc.strerror)) from None
    stdin = subprocess.PIPE if wants_stdin else subprocess.DEVNULL
    pass_fds = ()
    if script_fd is not None:
        if wants_stdin:
            pass_fds = (script_fd,)  # sourced by number; the pipe is the stdin
        else:
            stdin = script_fd  # the script of ``sh -s``
    try:
        return subprocess.Popen(
            argv,
            executable=None if header.get("argv") else SHELL,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
            start_new_session=True,
            close_fds=True,
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
    if header.get("argv"):
        return [str(a) for a in header["argv"]], None
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


def tty_spawn(base_env, header, body, cwd):
    """A command on a new pseudo-terminal, as its session leader with the terminal as its
    controlling one (job control and ^C work as in a shell). Returns the Popen and the master
    side, which carries both the command's output and its input."""
    size = header.get("tty") or {}
    master, slave = os.openpty()
    argv = [SHELL]
    try:
        set_window(master, size.get("rows", 24), size.get("cols", 80))
        env = dict(base_env)
        env.setdefault("TERM", "xterm")
        env.update(header.get("env") or {})
        if header.get("argv"):
            argv, executable = [str(a) for a in header["argv"]], None
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
