"""A contract ``Command`` as envd's ``StartRequest``, and a refused start as a typed error.

``script`` runs under ``/bin/sh -c`` (the contract's shell; E2B's SDK would use ``bash -l -c``),
``argv`` as given. The mount paths a command names are translated (``paths.py``): in the script,
in each argument, in each environment value, and its working directory. envd gives every
command ``PATH``, ``HOME``, ``USER`` and ``LOGNAME`` of the sandbox user; on top come ``LANG``,
``$LANGBOT_BOX_WORKSPACE`` (the real workspace) and, on a terminal, ``TERM``; then the command's
own variables.
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.process import process_pb

from boxruntime.backends.contract import Command
from boxruntime.backends.e2b.paths import WORKSPACE_ENV, SandboxPaths
from boxruntime.errors import BoxError, BoxSandboxError, BoxValidationError

SHELL = "/bin/sh"
# envd refused the start itself (a missing cwd or program): the request's fault, not the sandbox's.
REFUSED = (Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION, Code.PERMISSION_DENIED, Code.UNKNOWN)


def command_env(command: Command, paths: SandboxPaths) -> dict[str, str]:
    env = {"LANG": "C.UTF-8", WORKSPACE_ENV: paths.workspace}
    if command.terminal is not None:
        env["TERM"] = "xterm-256color"
    env.update(paths.rewrite_env(command.env))
    return env


def start_request(command: Command, paths: SandboxPaths) -> process_pb.StartRequest:
    if command.argv:
        argv = [paths.rewrite(part) for part in command.argv]
    elif command.script is not None:
        argv = [SHELL, "-c", paths.rewrite(command.script)]
    else:
        raise BoxValidationError("a command needs argv or a script")
    config = process_pb.ProcessConfig(
        cmd=argv[0], args=argv[1:], envs=command_env(command, paths), cwd=paths.real(command.cwd)
    )
    pty = None
    if command.terminal is not None:
        size = process_pb.PTY.Size(cols=command.terminal.cols, rows=command.terminal.rows)
        pty = process_pb.PTY(size=size)
    return process_pb.StartRequest(process=config, pty=pty, stdin=command.stdin or command.terminal is not None)


def start_error(exc: ConnectError, command: Command, paths: SandboxPaths) -> BoxError:
    what = command.argv[0] if command.argv else SHELL
    message = paths.logical_text(exc.message)
    if exc.code in REFUSED:
        return BoxValidationError(f"cannot start {what} in {command.cwd}: {message}")
    return BoxSandboxError(f"cannot start {what} in the E2B sandbox: {exc.code.value}: {message}")
