"""Starting a command without a spare shell, and keeping the agent's own descriptors out of
every command (stdlib only, Python >= 3.8).

A fresh spawn serves what a spare shell cannot take: argv commands, long scripts (through a
memfd, never argv: ARG_MAX), a stdin, environment names the shell cannot export.
"""

import fcntl
import os
import struct
import subprocess
import termios

from boxagent_spare import SHELL

SCRIPT_INLINE_MAX = 64 * 1024  # longer commands go through a memfd, not argv (ARG_MAX)


class SpawnError(Exception):
    """The command could not be started; the message says why."""


def fresh_spawn(base_env, header, body, cwd):
    """A Popen for the spawn request ``header`` (its script in ``body``), in ``cwd``."""
    env = dict(base_env)
    env.update(header.get("env") or {})
    argv, pass_fds, script_fd = command_argv(header, body)
    if header.get("pty") and header.get("handoff"):
        try:
            return pty_spawn(argv, cwd, env, header["pty"])
        except OSError as exc:
            raise SpawnError("cannot start %s on a terminal: %s" % (argv[0], exc.strerror)) from None
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            # Only a process whose pipes go to the daemon gets a stdin it can write to.
            stdin=subprocess.PIPE if header.get("stdin") and header.get("handoff") else subprocess.DEVNULL,
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


def command_argv(header, body):
    """argv for the request; a long shell script goes through a memfd, not argv."""
    if header.get("argv"):
        return [str(a) for a in header["argv"]], (), None
    if len(body) <= SCRIPT_INLINE_MAX:
        return [SHELL, "-c", body.decode("utf-8", "surrogateescape")], (), None
    fd = os.memfd_create("boxagent-script", 0)
    os.write(fd, body)
    os.lseek(fd, 0, os.SEEK_SET)
    return [SHELL, "/proc/self/fd/%d" % fd], (fd,), fd


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


def _take_terminal():  # in the child, before exec: the pty becomes its controlling terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_window(fd, cols, rows):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", int(rows), int(cols), 0, 0))


def pty_spawn(argv, cwd, env, size):
    """A command on a new terminal (``size`` = [cols, rows]), in a session of its own. Its
    stdin and stdout are the terminal's master side (handed to the daemon); its stderr, which
    a terminal merges into stdout, is an empty pipe."""
    master, slave = os.openpty()
    try:
        set_window(master, size[0], size[1])
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_take_terminal,
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
