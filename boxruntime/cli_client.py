"""``boxruntime exec | sessions | status``: the daemon's client commands, built on langbot_bridge.

Without ``--endpoint`` each command spawns a local daemon over stdio for its own duration;
with ``--endpoint`` (and ``--token`` or ``BOXRUNTIME_TOKEN``) it talks to a running one.

``exec`` streams the command's output as it is written and exits with the command's exit code
(124 on timeout, 128+N when killed by signal N). Failures of boxruntime itself — the daemon
refused the token, is unreachable, rejected the request — print one line on stderr and exit
with 125, so they are never mistaken for the command's own status.

Sessions keep their files between calls: ``exec --session ID`` in a spawned daemon leaves the
session's workspace under the daemon's data dir when the daemon exits, and the next
``exec --session ID`` on the same data dir starts a sandbox on it again. Without ``--session``
the command runs in a fresh session that is deleted afterwards. ``exec --skill NAME`` mounts an
installed skill (``boxruntime skill install``) read-only at /workspace/.skills/NAME.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from boxruntime.config import BACKEND_NAMES
from boxruntime.errors import BoxError
from boxruntime.models import EndReason, ExecResult, ExecStatus, SessionInfo, StreamedResult

# `boxruntime serve` builds this parser too: langbot_bridge (1.3 MiB of the daemon's resident
# memory) is imported only once a client command runs.
if TYPE_CHECKING:
    from langbot_bridge import BoxService, Connector, RemoteTarget, SpawnTarget

EXIT_CLIENT_ERROR = 125  # boxruntime failed, not the command (as `docker run` does)
EXIT_TIMED_OUT = 124  # as timeout(1)
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE, as a shell reports it
TOKEN_ENV = "BOXRUNTIME_TOKEN"
POOL_SIZE_ENV = "BOXRUNTIME_POOL_SIZE"
CONNECT_TIMEOUT = 60.0  # a spawned daemon's start-up includes probing the backend


def add_client_commands(sub: Any) -> None:
    """Register ``exec``, ``sessions`` and ``status`` on ``boxruntime``'s subparsers."""
    run = sub.add_parser("exec", help="run a command in a sandbox (spawns a local daemon unless --endpoint)")
    connection_options(run)
    run.add_argument("--session", help="session id; its files persist between calls (default: a one-off session)")
    run.add_argument("--image", help="sandbox image (default: the profile's)")
    run.add_argument("--profile", default="default", help="box profile (default, offline_readonly, network_basic …)")
    run.add_argument("--profile-dir", action="append", type=Path, help="directory with extra profile .toml files")
    run.add_argument("--workdir", help="working directory inside the sandbox (default /workspace)")
    run.add_argument("--timeout", type=int, help="seconds before the command is killed (capped by the profile)")
    run.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable")
    run.add_argument(
        "--skill",
        action="append",
        default=[],
        metavar="NAME",
        help="mount an installed skill read-only at /workspace/.skills/NAME (repeatable)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    run.set_defaults(func=cmd_exec)

    sessions = sub.add_parser("sessions", help="list a daemon's sessions")
    connection_options(sessions)
    sessions.add_argument("--json", action="store_true", help="print JSON")
    sessions.set_defaults(func=cmd_sessions)

    status = sub.add_parser("status", help="a daemon's backend and counts")
    connection_options(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)


def connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="remote daemon, e.g. ws://host:5410 (default: spawn a local one)")
    parser.add_argument(
        "--token", help=f"token for --endpoint (default: ${TOKEN_ENV}); write --token=T if T starts with '-'"
    )
    parser.add_argument("--data-dir", type=Path, help="data dir of a spawned local daemon")
    parser.add_argument("--backend", choices=BACKEND_NAMES, help="backend of a spawned local daemon (default: local)")
    parser.add_argument("--log-level", default="warning", help="log level (also the spawned daemon's)")


def say(message: str) -> None:
    print(f"boxruntime: {message}", file=sys.stderr, flush=True)


def _target(args: argparse.Namespace) -> SpawnTarget | RemoteTarget:
    from langbot_bridge import RemoteTarget, SpawnTarget

    if args.endpoint:
        return RemoteTarget(args.endpoint, args.token or os.environ.get(TOKEN_ENV))
    serve_args = ["--log-level", args.log_level]
    if args.data_dir:
        serve_args += ["--data-dir", str(args.data_dir)]
    if args.backend:
        serve_args += ["--backend", args.backend]
    # A daemon that lives for one command has no use for warm spare sandboxes.
    env = {POOL_SIZE_ENV: "0", **os.environ}
    return SpawnTarget(args=tuple(serve_args), env=env)


@contextlib.asynccontextmanager
async def connected(args: argparse.Namespace) -> AsyncIterator[Connector]:
    # Never box_shutdown: it would delete the files of the sessions this CLI keeps.
    # One attempt: a one-shot command has no use for reconnecting; it fails fast and says why.
    from langbot_bridge import Connector, Timing

    timing = Timing(connect_timeout=CONNECT_TIMEOUT)
    async with Connector(_target(args), timing=timing, shutdown_on_close=False, reconnect=False) as connector:
        connector.require()
        yield connector


def run(main: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    async def guarded() -> int:
        try:
            return await main(args)
        except BoxError as exc:
            say(str(exc))
            return EXIT_CLIENT_ERROR

    try:
        return anyio.run(guarded)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


# ── exec ────────────────────────────────────────────────────────────────


def _exec_request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if args.image:
        request["image"] = args.image
    if args.workdir:
        request["workdir"] = args.workdir
    if args.timeout is not None:
        request["timeout_sec"] = args.timeout
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BoxError(f"--env expects KEY=VALUE, not {item!r}")
        env[key] = value
    if env:
        request["env"] = env
    return request


def _exit_status(result: ExecResult) -> int:
    if result.status == ExecStatus.TIMED_OUT:
        say(f"command timed out after {result.duration_ms / 1000:g} s")
        return EXIT_TIMED_OUT
    if result.end_reason == EndReason.OOM:
        say("command was killed: out of memory")
    if result.signal:
        return 128 + result.signal
    return result.exit_code if result.exit_code is not None else EXIT_CLIENT_ERROR


async def _stream(service: BoxService, session_id: str, command: str, request: dict[str, Any]) -> int:
    from langbot_bridge import chunk_bytes

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
    return _exit_status(result)


async def _exec(args: argparse.Namespace) -> int:
    from langbot_bridge import BoxClient, BoxService
    from langbot_bridge.skills import skill_mounts

    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        raise BoxError("no command given: boxruntime exec [OPTIONS] -- CMD [ARGS...]")
    request = _exec_request(args)
    async with connected(args) as connector:
        mounts = await skill_mounts(BoxClient(connector), args.skill)
        if mounts:
            request["extra_mounts"] = [mount.model_dump(mode="json") for mount in mounts]
        # The skill packages the daemon itself reported are the only host paths this mounts.
        roots = [mount.host_path for mount in mounts]
        service = BoxService(
            connector, profile=args.profile, profile_dirs=args.profile_dir or (), allowed_mount_roots=roots
        )
        session_id = args.session or f"cli-{secrets.token_hex(6)}"
        try:
            return await _stream(service, session_id, shlex.join(argv), request)
        finally:
            if not args.session:
                with anyio.CancelScope(shield=True), contextlib.suppress(BoxError):
                    await service.delete_session(session_id)


def cmd_exec(args: argparse.Namespace) -> int:
    return run(_exec, args)


# ── sessions / status ───────────────────────────────────────────────────


def _session_rows(sessions: list[SessionInfo]) -> list[list[str]]:
    rows = [["SESSION", "BACKEND", "IMAGE", "NETWORK", "STATUS", "CREATED", "LAST USED"]]
    for info in sorted(sessions, key=lambda s: s.created_at):
        rows.append(
            [
                info.session_id,
                info.backend_name,
                info.image,
                info.network.value,
                info.status.value,
                info.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                info.last_used_at.strftime("%Y-%m-%d %H:%M:%S"),
            ]
        )
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


async def _sessions(args: argparse.Namespace) -> int:
    from langbot_bridge import BoxService

    async with connected(args) as connector:
        sessions = await BoxService(connector).sessions()
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in sessions], indent=2))
    elif sessions:
        print_table(_session_rows(sessions))
    elif not args.endpoint:
        print("no live sessions: this local daemon was started for this command (use --endpoint for a running one)")
    else:
        print("no sessions")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    return run(_sessions, args)


async def _status(args: argparse.Namespace) -> int:
    from langbot_bridge import BoxService

    async with connected(args) as connector:
        status = await BoxService(connector).status()
    if args.json:
        print(json.dumps(status.model_dump(mode="json"), indent=2))
        return 0
    backend = status.backend
    state = "available" if backend.available else f"unavailable: {backend.reason}"
    print(f"endpoint: {connector.target.describe()}")
    print(f"backend:  {backend.name or 'none'} ({state})")
    if backend.unsafe_direct_execution:
        print("WARNING:  this backend runs commands directly on the daemon's machine: nothing is isolated")
    counts = f"{status.active_sessions} active of at most {status.max_sessions}"
    print(f"sessions: {counts}; idle TTL {status.session_ttl_sec} s")
    print(f"managed processes: {status.managed_processes}")
    for limit, how in backend.enforced_limits.items():
        print(f"  {limit}: {how}")
    return 0 if backend.available else 1


def cmd_status(args: argparse.Namespace) -> int:
    return run(_status, args)
