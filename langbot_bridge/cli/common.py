"""The daemon's client commands, built on langbot_bridge: what they share (how they reach a
daemon, how they fail), and ``sessions`` and ``status``. ``exec`` is in ``cli_exec``.

Every client command talks to the daemon named by ``--endpoint``, else by
``$BOXRUNTIME_ENDPOINT`` (with ``--token`` or ``$BOXRUNTIME_TOKEN``), as ``docker`` follows
``DOCKER_HOST``. With neither (or with ``--local``) it spawns a local daemon over stdio for its
own duration; ``--data-dir`` and ``--backend`` configure that daemon and are refused when a
running one is named, since it would ignore them.

Failures of boxruntime itself (the daemon refused the token, is unreachable, rejected the
request) print one line on stderr and exit with 125, so they are never mistaken for a
command's own status.

Imports are lazy throughout: every command pays for them at start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boxruntime.models import backend_names as names

if TYPE_CHECKING:
    from boxruntime.models import SessionInfo
    from langbot_bridge import Connector, RemoteTarget, SpawnTarget

EXIT_CLIENT_ERROR = 125  # boxruntime failed, not the command (as `docker run` does)
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE, as a shell reports it
EXIT_INTERRUPTED = 128 + 2  # SIGINT (Ctrl-C), as a shell reports it
ENDPOINT_ENV = "BOXRUNTIME_ENDPOINT"
TOKEN_ENV = "BOXRUNTIME_TOKEN"
POOL_SIZE_ENV = "BOXRUNTIME_POOL_SIZE"
CONNECT_TIMEOUT = 60.0  # a spawned daemon's start-up includes probing the backend


class ClientError(Exception):
    """A client command cannot go on; the message says why (printed as one line, exit 125)."""


def add_client_commands(sub: Any) -> None:
    """Register ``exec``, ``sessions`` and ``status`` on ``boxruntime``'s subparsers."""
    from langbot_bridge.cli.exec_command import add_exec_command

    add_exec_command(sub)

    sessions = sub.add_parser("sessions", help="list a daemon's sessions")
    connection_options(sessions)
    sessions.add_argument("--json", action="store_true", help="print JSON")
    sessions.set_defaults(func=cmd_sessions)

    status = sub.add_parser("status", help="a daemon's backend and counts")
    connection_options(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)


def connection_options(parser: argparse.ArgumentParser) -> None:
    """``--endpoint``/``--token`` for a running daemon, or what configures a spawned one."""
    where = parser.add_argument_group("daemon")
    where.add_argument(
        "--endpoint",
        help=f"a running daemon, e.g. ws://127.0.0.1:5410 (default: ${ENDPOINT_ENV}; else a local one is spawned)",
    )
    where.add_argument("--token", help=f"its token (default: ${TOKEN_ENV}); write --token=T if T starts with '-'")
    where.add_argument("--local", action="store_true", help=f"spawn a local daemon even if ${ENDPOINT_ENV} is set")
    where.add_argument("--data-dir", type=Path, help="data dir of a spawned local daemon")
    where.add_argument("--backend", choices=names.CHOICES, help="backend of a spawned local daemon (default: local)")
    where.add_argument(
        "--log-level", help="log level (default warning; a spawned daemon's default is error: this command reports)"
    )


def endpoint_of(args: argparse.Namespace) -> str | None:
    """The running daemon this command talks to, or None to spawn one."""
    if args.local:
        if args.endpoint:
            raise ClientError("--local and --endpoint contradict each other: choose one")
        return None
    endpoint: str | None = args.endpoint or os.environ.get(ENDPOINT_ENV) or None
    if endpoint is not None:
        spawn_only = [flag for flag, value in (("--data-dir", args.data_dir), ("--backend", args.backend)) if value]
        if spawn_only:
            source = "--endpoint" if args.endpoint else f"${ENDPOINT_ENV}"
            verb = "configures" if len(spawn_only) == 1 else "configure"
            raise ClientError(
                f"{' and '.join(spawn_only)} {verb} a spawned local daemon, but this command talks to "
                f"{endpoint} ({source}); drop them, or add --local to spawn one"
            )
    return endpoint


def say(message: str) -> None:
    """Print one message for the user, on stderr."""
    print(f"boxruntime: {message}", file=sys.stderr, flush=True)


def _target(args: argparse.Namespace) -> SpawnTarget | RemoteTarget:
    from langbot_bridge.links import RemoteTarget, SpawnTarget

    endpoint = endpoint_of(args)
    if endpoint is not None:
        return RemoteTarget(endpoint, args.token or os.environ.get(TOKEN_ENV))
    # Its failed requests come back to this command, which reports them: by default the daemon
    # says nothing more (its warnings would repeat what this command prints).
    serve_args = ["--log-level", args.log_level or "error"]
    if args.data_dir:
        serve_args += ["--data-dir", str(args.data_dir)]
    if args.backend:
        serve_args += ["--backend", args.backend]
    # A daemon that lives for one command has no use for warm spare sandboxes.
    env = {POOL_SIZE_ENV: "0", **os.environ}
    env.pop(ENDPOINT_ENV, None)
    return SpawnTarget(args=tuple(serve_args), env=env)


@contextlib.asynccontextmanager
async def connected(args: argparse.Namespace) -> AsyncIterator[Connector]:
    """A connector to the command's daemon, up (or BoxError saying why not)."""
    # Never box_shutdown: it would delete the files of the sessions this CLI keeps.
    # One attempt: a one-shot command has no use for reconnecting; it fails fast and says why.
    from langbot_bridge.connector import Connector, Timing

    timing = Timing(connect_timeout=CONNECT_TIMEOUT)
    async with Connector(_target(args), timing=timing, shutdown_on_close=False, reconnect=False) as connector:
        connector.require()
        yield connector


def run(main: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    """Run a client command: its own errors and the daemon's are one line on stderr, exit 125."""
    import logging
    import signal

    import anyio

    from boxruntime.errors import BoxError

    level = (args.log_level or "warning").upper()
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level, logging.WARNING))

    async def guarded() -> int:
        # Ctrl-C cancels the command through an anyio scope, not asyncio's KeyboardInterrupt:
        # a scope's cancellation holds until the scope exits, where the loop's one-shot
        # cancellation of the main task can be absorbed by a scope inside it and then lost.
        code = EXIT_INTERRUPTED
        interrupted = False

        async def on_interrupt(scope: anyio.CancelScope) -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    interrupted = True
                    scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(on_interrupt, tg.cancel_scope)
            try:
                code = await main(args)
            except (BoxError, ClientError) as exc:
                say(str(exc))
                code = EXIT_CLIENT_ERROR
            tg.cancel_scope.cancel()
        return EXIT_INTERRUPTED if interrupted else code

    try:
        return anyio.run(guarded)
    except ClientError as exc:  # raised before the loop ran anything
        say(str(exc))
        return EXIT_CLIENT_ERROR
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


# ── sessions / status ───────────────────────────────────────────────────


def _session_rows(sessions: list[SessionInfo]) -> list[list[str]]:
    rows = [["SESSION", "BACKEND", "IMAGE", "NETWORK", "STATUS", "PERSISTENT", "CREATED", "LAST USED"]]
    for info in sorted(sessions, key=lambda s: s.created_at):
        rows.append(
            [
                info.session_id,
                info.backend_name,
                info.image,
                info.network.value,
                info.status.value,
                "yes" if info.persistent else "no",
                info.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                info.last_used_at.strftime("%Y-%m-%d %H:%M:%S"),
            ]
        )
    return rows


def print_table(rows: list[list[str]]) -> None:
    """Print rows as aligned columns under their headers."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


async def _sessions(args: argparse.Namespace) -> int:
    import json

    from langbot_bridge.service import BoxService

    async with connected(args) as connector:
        sessions = await BoxService(connector).sessions()
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in sessions], indent=2))
    elif sessions:
        print_table(_session_rows(sessions))
    elif endpoint_of(args) is None:
        print(
            "no live sessions: this local daemon was started for this command "
            f"(use --endpoint or ${ENDPOINT_ENV} for a running one)"
        )
    else:
        print("no sessions")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    """``boxruntime sessions``: list the daemon's sessions."""
    return run(_sessions, args)


async def _status(args: argparse.Namespace) -> int:
    import json

    from langbot_bridge.service import BoxService

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
    """``boxruntime status``: the daemon's backend and counts."""
    return run(_status, args)
