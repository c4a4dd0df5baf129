"""A shell started ahead of time, so a command does not wait for the fork and exec of /bin/sh.

Stdlib only, Python >= 3.8. The spare shell is ``sh -s``: it blocks reading its script from
a pipe on its stdin. A command is handed over by writing a prologue (``cd`` to the workdir,
``export`` of the environment) and the command itself into that pipe and closing it: the
shell then behaves as ``sh -c <command>`` would in that directory with that environment.
The agent makes the next spare only when it is idle, so that cost is off everyone's path.

The command runs as the shell's own script, not sourced (``. FILE`` made dash name the file in
every error: ``/bin/sh: 5: /proc/self/fd/3: nosuchcmd: not found``): errors read
``sh: 1: nosuchcmd: not found``, as after ``sh -c``. The prologue and the command share line 1,
and the command is a brace group with its stdin on /dev/null (``group``): the shell keeps
reading its script from the pipe, the command never does.

Only small scripts go this way (they fit the pipe buffer, so writing never blocks the agent)
and only environments whose names the shell can export; anything else uses a fresh spawn.

A spare can also take the *shape* of the last command: an argv ``bash [-l] -c COMMAND`` (how
E2B's SDK runs every command) in a given environment. The spare is then that bash, started with
that environment (so a login shell has read its profile ahead of time); it reads the workdir and
the command from the pipe and ``eval``s the command, which behaves as ``-c`` would (same ``$0``,
same error messages). The next spare takes the shape of the last command, so a sandbox that runs
one kind of command keeps a spare of that kind.
"""

import os
import re
import signal

import boxagent_wire as wire

SPARES = 2  # kept ready: see SparePool
SHELL = "/bin/sh"
SHELL_NAME = "sh"  # argv[0], and so $0 and the prefix of the shell's own error messages
SCRIPT_FD = 3  # where a shaped spare finds its script pipe
SCRIPT_MAX = 48 * 1024  # well inside the 64 KiB pipe buffer
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BASH_FLAGS = ("-l", "--login")  # options of a shaped spare's bash besides -c (read before the command)
# What a shaped spare runs: the workdir and the command, each ended by a NUL, come from the pipe.
# bash's ``read -d ''`` stops at the NUL; the pipe is closed before the command runs.
SHAPED_BOOT = (
    "IFS= read -r -d '' __boxagent_cwd <&%d; IFS= read -r -d '' __boxagent_cmd <&%d; exec %d<&-; "
    # cd sets OLDPWD, which a fresh `bash -c` would not have: put back what the environment said.
    '[ -n "${OLDPWD+set}" ] && __boxagent_old=$OLDPWD; cd -- "$__boxagent_cwd" || exit 126; '
    'if [ -n "${__boxagent_old+set}" ]; then OLDPWD=$__boxagent_old; else unset OLDPWD; fi; '
    "unset __boxagent_old __boxagent_cwd; "
    'eval "unset __boxagent_cmd; $__boxagent_cmd"'
) % (SCRIPT_FD, SCRIPT_FD, SCRIPT_FD)


def shape_of(header, base_env):
    """``(argv before -c, environment)`` of a spawn request a shaped spare could serve, else None."""
    argv = header.get(wire.Spawn.ARGV)
    if (
        not argv
        or header.get(wire.Spawn.STDIN)
        or header.get(wire.Spawn.PTY)
        or header.get(wire.Spawn.TTY)
        or len(argv) < 3
        or argv[-2] != "-c"
    ):
        return None
    shell, flags = argv[0], argv[1:-2]
    if os.path.basename(str(shell)) != "bash" or not all(f in BASH_FLAGS for f in flags):
        return None
    env = dict(base_env)
    env.update(header.get(wire.Spawn.ENV) or {})
    return [str(a) for a in argv[:-2]], env


# Python ignores these two, and an ignored signal stays ignored across exec: back to the
# default for the command, as subprocess's restore_signals does for a fresh spawn. Else
# ``yes | head -n1`` has yes report a broken pipe instead of dying of SIGPIPE.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def quote(value):
    return "'" + value.replace("'", "'\\''") + "'"


def prologue(cwd, env):
    """``cd`` and ``export``s on one line, which the command continues (so it starts on line 1)."""
    parts = ["cd -- %s || exit 126; " % quote(cwd)]
    for key, value in env.items():
        parts.append("export %s=%s; " % (key, quote(value)))
    return "".join(parts).encode("utf-8", "surrogateescape")


def group(body):
    """The command as a brace group reading /dev/null: run as the script of ``sh -s``, it must
    not read the rest of that script as its own input. The leading ``:`` keeps a command that
    is only a comment from making an empty (invalid) group."""
    return b"{ :; " + body + b"\n} </dev/null\n"


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
    def __init__(self, base_env, shape=None):
        # posix_spawn (vfork underneath) blocks the agent a third as long as Popen: the agent
        # makes a spare after every command, so this is paid once per command. Every fd the
        # agent opens is close-on-exec, so the shell gets only the three below and the script.
        self.shape = shape
        read_end, self.script_fd = os.pipe()
        if shape is None:  # ``sh -s``: the script is its stdin
            argv, env = [SHELL_NAME, "-s"], base_env
            script_actions = [(os.POSIX_SPAWN_DUP2, read_end, 0)]
        else:  # the shape's bash: the script on SCRIPT_FD, stdin /dev/null as ``bash -c`` has it
            argv, env = shape[0] + ["-c", SHAPED_BOOT], shape[1]
            script_actions = [
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, read_end, SCRIPT_FD),
            ]
        out_r, out_w = _pipe_or_close(read_end, self.script_fd)
        err_r, err_w = _pipe_or_close(read_end, self.script_fd, out_r, out_w)
        try:
            pid = os.posix_spawnp(
                SHELL if shape is None else argv[0],
                argv,
                env,
                file_actions=[
                    *script_actions,
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
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

    def script_for(self, header, body, base_env):
        """The bytes to feed this shell for the spawn request, or None if it cannot take it."""
        if self.dead or header.get(wire.Spawn.STDIO):
            return None
        if self.shape is not None:
            if shape_of(header, base_env) != self.shape:
                return None
            parts = [header.get(wire.Spawn.CWD) or "/", header[wire.Spawn.ARGV][-1]]
            if any("\0" in part for part in parts):
                return None
            script = "".join(part + "\0" for part in parts).encode("utf-8", "surrogateescape")
            return script if len(script) <= SCRIPT_MAX else None
        if (
            header.get(wire.Spawn.ARGV)
            or header.get(wire.Spawn.STDIN)
            or header.get(wire.Spawn.TTY)
            or header.get(wire.Spawn.PTY)
        ):
            return None
        env = header.get(wire.Spawn.ENV) or {}
        if not all(_NAME.match(key) for key in env):
            return None
        script = prologue(header.get(wire.Spawn.CWD) or "/", env) + group(body)
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
            os.close(self.script_fd)  # EOF: the shell reads no script and exits
            self.script_fd = None
        for pipe in (self.popen.stdout, self.popen.stderr):
            pipe.close()


class SparePool:
    """The spare shells kept for the next commands. Two: a login shell reads its profile for a
    few ms, and a command that comes right after another still finds one that has done so.
    The agent refills the pool only when idle (``refill``); each spare takes the shape of the
    last command (``expect``)."""

    def __init__(self, base_env):
        self.base_env = base_env
        self.spares = []
        self.shape = None  # the shape of the last command, which the next spares take

    def expect(self, header):
        """A spawn request came: the next spares take its shape."""
        self.shape = shape_of(header, self.base_env)

    def take(self, header, body):
        """The started command (a Popen-like) if a spare could take the request, else None."""
        for spare in self.spares:
            script = spare.script_for(header, body, self.base_env)
            if script is not None:
                self.spares.remove(spare)
                return spare.hand_over(script)
        return None

    def short(self):
        return len(self.spares) < SPARES

    def refill(self):
        """Start one more spare (the caller checks that nothing waits on the agent)."""
        try:
            self.spares.append(SpareShell(self.base_env, self.shape))
        except OSError:
            self.shape = None  # that shell cannot be started: fall back to the plain one

    def discard_unexpected(self):
        """Spares of another shape than the commands now coming; replaced when idle."""
        self.discard(lambda spare: spare.shape != self.shape)

    def forget(self, pid):
        """A reaped pid no command owns: if a spare's, it died unused."""
        self.discard(lambda spare: spare.pid == pid)

    def discard_all(self):
        self.discard(lambda spare: True)

    def discard(self, which):
        for spare in [s for s in self.spares if which(s)]:
            self.spares.remove(spare)
            spare.discard()
