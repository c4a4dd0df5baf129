"""Starting a command without a spare shell, and keeping the agent's own descriptors out of
every command (stdlib only, Python >= 3.8).

A fresh spawn serves what a spare shell cannot take: argv commands, long scripts (through a
memfd, never argv: ARG_MAX), a stdin, environment names the shell cannot export.
"""

import os
import subprocess

from boxagent_spare import SHELL

SCRIPT_INLINE_MAX = 64 * 1024  # longer commands go through a memfd, not argv (ARG_MAX)


class SpawnError(Exception):
    """The command could not be started; the message says why."""


def fresh_spawn(base_env, header, body, cwd, stdio=None):
    """A Popen for the spawn request ``header`` (its script in ``body``), in ``cwd``; with
    ``stdio`` (sockets for stdin or None, stdout, stderr: boxagent_stdio) as its stdio."""
    env = dict(base_env)
    env.update(header.get("env") or {})
    argv, pass_fds, script_fd = command_argv(header, body)
    # Only a process whose pipes go to the daemon gets a stdin it can write to.
    stdin = subprocess.PIPE if header.get("stdin") and header.get("handoff") else subprocess.DEVNULL
    stdout = stderr = subprocess.PIPE
    if stdio is not None:
        stdin, stdout, stderr = stdio[0] or subprocess.DEVNULL, stdio[1], stdio[2]
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
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
