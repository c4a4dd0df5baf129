"""A shell started ahead of time, so a command does not wait for the fork and exec of /bin/sh.

Stdlib only, Python >= 3.8. The spare shell runs ``. /proc/self/fd/N`` and blocks reading its
script from a pipe. A command is handed over by writing a prologue (``cd`` to the workdir,
``export`` of the environment) and the command itself into that pipe and closing it: the
shell then behaves as ``sh -c <command>`` would in that directory with that environment.
The agent makes the next spare only when it is idle, so that cost is off everyone's path.

Only small scripts go this way (they fit the pipe buffer, so writing never blocks the agent)
and only environments whose names the shell can export; anything else uses a fresh spawn.
"""

import os
import re
import signal

SHELL = "/bin/sh"
SCRIPT_FD = 3  # where the shell finds its script pipe
SCRIPT_MAX = 48 * 1024  # well inside the 64 KiB pipe buffer
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Python ignores these two, and an ignored signal stays ignored across exec: back to the
# default for the command, as subprocess's restore_signals does for a fresh spawn. Else
# ``yes | head -n1`` has yes report a broken pipe instead of dying of SIGPIPE.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def quote(value):
    return "'" + value.replace("'", "'\\''") + "'"


def prologue(cwd, env):
    lines = ["cd -- %s || exit 126\n" % quote(cwd)]
    for key, value in env.items():
        lines.append("export %s=%s\n" % (key, quote(value)))
    return "".join(lines).encode("utf-8", "surrogateescape")


def _pipe_or_close(*opened):
    """A new pipe; if that fails, the pipes already made for the same spawn are closed."""
    try:
        return os.pipe()
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise


class Spawned:
    """The parts of a Popen the agent uses, for a process made with ``os.posix_spawn``."""

    def __init__(self, pid, stdout_fd, stderr_fd):
        self.pid = pid
        self.stdin = None
        # Owned for the life of the process; the agent closes them at EOF (close_pipe).
        self.stdout = open(stdout_fd, "rb", buffering=0)  # noqa: SIM115
        self.stderr = open(stderr_fd, "rb", buffering=0)  # noqa: SIM115
        self.returncode = None


class SpareShell:
    def __init__(self, base_env):
        # posix_spawn (vfork underneath) blocks the agent a third as long as Popen: the agent
        # makes a spare after every command, so this is paid once per command. Every fd the
        # agent opens is close-on-exec, so the shell gets only the three below and the script.
        read_end, self.script_fd = os.pipe()
        out_r, out_w = _pipe_or_close(read_end, self.script_fd)
        err_r, err_w = _pipe_or_close(read_end, self.script_fd, out_r, out_w)
        try:
            pid = os.posix_spawn(
                SHELL,
                [SHELL, "-c", ". /proc/self/fd/%d" % SCRIPT_FD],
                base_env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                    (os.POSIX_SPAWN_DUP2, read_end, SCRIPT_FD),
                ],
                setsid=True,
                setsigdef=RESTORED_SIGNALS,
            )
        except BaseException:
            for fd in (self.script_fd, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (read_end, out_w, err_w):
                os.close(fd)
        self.popen = Spawned(pid, out_r, err_r)
        self.pid = pid
        self.dead = False

    def script_for(self, header, body):
        """The bytes to feed this shell for the spawn request, or None if it cannot take it."""
        if self.dead or header.get("argv") or header.get("stdin") or header.get("stdio"):
            return None
        env = header.get("env") or {}
        if not all(_NAME.match(key) for key in env):
            return None
        script = prologue(header.get("cwd") or "/", env) + body
        return script if len(script) <= SCRIPT_MAX else None

    def hand_over(self, script):
        """Start the command; the Popen is then the command's."""
        view = memoryview(script)
        while view:
            view = view[os.write(self.script_fd, view) :]
        os.close(self.script_fd)
        self.script_fd = None
        return self.popen

    def discard(self):
        if self.script_fd is not None:
            os.close(self.script_fd)  # EOF: the shell sources nothing and exits
            self.script_fd = None
        for pipe in (self.popen.stdout, self.popen.stderr):
            pipe.close()
