"""``boxruntime exec``: run a command in a sandbox, with docker's habits.

The output streams as it is written and the CLI exits with the command's exit code (124 on
timeout, 128+N when killed by signal N; 125 when boxruntime itself failed). ``-i`` forwards
stdin to the command; ``-t`` runs it on a terminal (``-it`` for an interactive shell). An
interactive command has no time limit unless ``--timeout`` gives one.

Sessions: without ``--session`` the command runs in a fresh session deleted afterwards. With
``--session ID`` the session and its files stay for the next ``exec --session ID``: on a
running daemon until the session is idle for the daemon's TTL (``BOXRUNTIME_SESSION_TTL_SEC``,
default 300 s) unless ``--persistent``, which exempts it from that reaper; on a spawned local
daemon the workspace stays on disk under the daemon's data dir, and the next spawned daemon on
that data dir starts a sandbox on it again. ``--skill NAME`` mounts an installed skill
read-only at /workspace/.skills/NAME.

A request the daemon or the profile cannot honour is refused with a clear message, never
clamped or substituted: ``--timeout`` above the profile's limit, ``--image`` on a backend that
runs no images (nsjail), ``--persistent`` without a session to keep.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langbot_bridge.cli.common import ClientError, connected, connection_options, run, say

if TYPE_CHECKING:
    from boxruntime.models import ExecResult
    from langbot_bridge.service import BoxService

EXIT_TIMED_OUT = 124  # as timeout(1)


def add_exec_command(sub: Any) -> None:
    """Register ``exec`` on ``boxruntime``'s subparsers."""
    run_ = sub.add_parser(
        "exec",
        help="run a command in a sandbox (a running daemon: --endpoint or $BOXRUNTIME_ENDPOINT; else a local one)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    connection_options(run_)
    run_.add_argument("-i", "--interactive", action="store_true", help="forward stdin to the command")
    run_.add_argument("-t", "--tty", action="store_true", help="run the command on a terminal (-it: a shell)")
    run_.add_argument("--session", help="session id; its files stay for the next exec --session ID (default: one-off)")
    run_.add_argument(
        "--persistent", action="store_true", help="with --session: the daemon's idle reaper never removes it"
    )
    run_.add_argument("--image", help="sandbox image (default: the profile's; docker backend only)")
    run_.add_argument("--profile", default="default", help="box profile (default, offline_readonly, network_basic …)")
    run_.add_argument("--profile-dir", action="append", type=Path, help="directory with extra profile .toml files")
    run_.add_argument("-w", "--workdir", help="working directory inside the sandbox (default /workspace)")
    run_.add_argument(
        "--timeout", type=int, help="seconds before the command is killed (default: the profile's; -i/-t: none)"
    )
    run_.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable")
    run_.add_argument(
        "--skill",
        action="append",
        default=[],
        metavar="NAME",
        help="mount an installed skill read-only at /workspace/.skills/NAME (repeatable)",
    )
    run_.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    run_.set_defaults(func=cmd_exec)


def _exec_request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if args.image:
        request["image"] = args.image
    if args.workdir:
        request["workdir"] = args.workdir
    if args.timeout is not None:
        if args.timeout < 1:
            raise ClientError(f"--timeout must be at least 1 second, not {args.timeout}")
        request["timeout_sec"] = args.timeout
    if args.persistent:
        request["persistent"] = True
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--env expects KEY=VALUE, not {item!r}")
        env[key] = value
    if env:
        request["env"] = env
    return request


def _check_flags(args: argparse.Namespace) -> list[str]:
    argv: list[str] = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        raise ClientError("no command given: boxruntime exec [OPTIONS] -- CMD [ARGS...]")
    if args.persistent and not args.session:
        raise ClientError("--persistent keeps a named session: give it one with --session ID")
    if args.tty and args.interactive and not os.isatty(sys.stdin.fileno()):
        raise ClientError("-it needs a terminal on stdin (the input device is not a TTY); drop -t to pipe input in")
    return argv


def check_timeout(service: BoxService, requested: int | None) -> None:
    """A timeout above the profile's limit is refused, saying which profiles allow it."""
    limit = service.profile.max_timeout_sec
    if requested is None or requested <= limit:
        return
    roomier = sorted(
        (p.max_timeout_sec, name) for name, p in service.profiles.items() if p.max_timeout_sec >= requested
    )
    hint = f"use --profile {roomier[0][1]} (up to {roomier[0][0]} s)" if roomier else "add a profile that allows it"
    raise ClientError(
        f"--timeout {requested} is above the {service.profile.name} profile's limit of {limit} s: "
        f"ask for at most {limit}, or {hint} (--profile-dir for your own)"
    )


def exit_status(result: ExecResult) -> int:
    """The CLI's exit code for a command's result, as a shell would report it."""
    from boxruntime.models import EndReason, ExecStatus

    if result.status == ExecStatus.TIMED_OUT:
        say(f"command timed out after {result.duration_ms / 1000:g} s")
        return EXIT_TIMED_OUT
    if result.end_reason == EndReason.OOM:
        say("command was killed: out of memory")
    if result.signal:
        return 128 + result.signal
    return result.exit_code if result.exit_code is not None else 125


async def _stream(service: BoxService, session_id: str, command: str, request: dict[str, Any]) -> ExecResult:
    from boxruntime.errors import BoxError
    from boxruntime.models import StreamedResult
    from langbot_bridge.client import chunk_bytes

    outputs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    result: ExecResult | None = None
    async with contextlib.aclosing(service.exec_stream(session_id, command, request, actor="cli")) as stream:
        async for item in stream:
            if isinstance(item, StreamedResult):
                result = item.result
                continue
            out = outputs[item.stream]
            out.write(chunk_bytes(item))
            out.flush()
    if result is None:
        raise BoxError("the daemon ended the output stream without a result")
    return result


async def _exec(args: argparse.Namespace) -> int:
    import anyio

    from boxruntime.errors import BoxError
    from langbot_bridge.service import BoxService

    argv = _check_flags(args)
    request = _exec_request(args)
    async with connected(args) as connector:
        roots: list[str] = []
        if args.skill:
            from langbot_bridge.client import BoxClient
            from langbot_bridge.skills import skill_mounts

            mounts = await skill_mounts(BoxClient(connector), args.skill)
            request["extra_mounts"] = [mount.model_dump(mode="json") for mount in mounts]
            # The skill packages the daemon itself reported are the only host paths this mounts.
            roots = [mount.host_path for mount in mounts]
        service = BoxService(
            connector, profile=args.profile, profile_dirs=args.profile_dir or (), allowed_mount_roots=roots
        )
        check_timeout(service, args.timeout)
        session_id = args.session or f"cli-{secrets.token_hex(6)}"
        command = shlex.join(argv)
        try:
            if args.interactive or args.tty:
                from langbot_bridge.cli.terminal import run_interactive

                result = await run_interactive(
                    service, session_id, command, request, stdin=args.interactive, tty=args.tty
                )
            else:
                result = await _stream(service, session_id, command, request)
            return exit_status(result)
        finally:
            if not args.session:
                with anyio.CancelScope(shield=True), contextlib.suppress(BoxError):
                    await service.delete_session(session_id)


def cmd_exec(args: argparse.Namespace) -> int:
    """``boxruntime exec``: run a command in a sandbox; exits with the command's status."""
    return run(_exec, args)
