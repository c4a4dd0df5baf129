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
import subprocess

SHELL = "/bin/sh"
SCRIPT_MAX = 48 * 1024  # well inside the 64 KiB pipe buffer
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(value):
    return "'" + value.replace("'", "'\\''") + "'"


def prologue(cwd, env):
    lines = ["cd -- %s || exit 126\n" % quote(cwd)]
    for key, value in env.items():
        lines.append("export %s=%s\n" % (key, quote(value)))
    return "".join(lines).encode("utf-8", "surrogateescape")


class SpareShell:
    def __init__(self, base_env):
        read_end, self.script_fd = os.pipe()
        try:
            self.popen = subprocess.Popen(
                [SHELL, "-c", ". /proc/self/fd/%d" % read_end],
                cwd="/",
                env=base_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(read_end,),
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(read_end)
        self.pid = self.popen.pid
        self.dead = False

    def script_for(self, header, body):
        """The bytes to feed this shell for the spawn request, or None if it cannot take it."""
        if self.dead or header.get("argv") or header.get("stdin"):
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
