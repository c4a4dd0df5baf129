"""Warm exec over LangBot's stdio transport: both daemons spawned by LangBot's own
``StdioClientController``, the way LangBot runs a local Box runtime on Linux (reference §E.1).

The websocket sections talk to daemons the bench started; here LangBot's controller starts each
daemon itself, with pipes for stdin and stdout, and closing stdin ends it (both daemons drop
their sessions on EOF). The measurement is the websocket one (``bench_warm``), unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench_daemons import free_port, lbp_argv, ours_env, theirs_env
from bench_harness import OURS, SIDES, THEIRS, BenchError, Shape, Side, log
from bench_sections import bench_warm

EXIT_TIMEOUT_SEC = 60.0  # for a daemon to end by itself once its stdin is closed
OURS_STDIO_DATA = "ours-stdio-data"


Command = tuple[list[str], dict[str, str]]  # argv, environment


def stdio_commands(work: Path, mount_root: Path, backend: str, image: str) -> dict[str, Command]:
    """argv and environment of each daemon in stdio mode; the port is each one's relay."""
    ours = [sys.executable, "-m", "boxruntime", "serve", "--stdio", "--port", str(free_port())]
    ours += ["--backend", backend, "--allow-mount-root", str(mount_root)]
    theirs = [*lbp_argv(), "box", "-s", "--ws-control-port", str(free_port())]
    # A warm exec never needs our pool.
    return {OURS: (ours, ours_env(work / OURS_STDIO_DATA, image, 0)), THEIRS: (theirs, theirs_env(backend))}


async def spawn(side: Side, argv: list[str], env: dict[str, str], cwd: Path) -> None:
    """LangBot's StdioClientController + Handler + ActionRPCBoxClient, as its connector wires them."""
    from langbot_plugin.box.client import ActionRPCBoxClient
    from langbot_plugin.runtime.io.controllers.stdio.client import StdioClientController
    from langbot_plugin.runtime.io.handler import Handler

    handed: list[Any] = []

    async def on_connection(connection: Any) -> None:
        handed.append(connection)

    controller = StdioClientController(command=argv[0], args=argv[1:], env=env, working_dir=str(cwd))
    await controller.run(on_connection)
    side.process = controller.process
    side.connection = handed[0]
    handler = Handler(handed[0])
    side.task = asyncio.create_task(handler.run())
    client = ActionRPCBoxClient(logging.getLogger(f"bench.{side.name}"))
    client.set_handler(handler)
    side.client = client
    try:
        await asyncio.wait_for(client.initialize(), 120)  # box_health, as LangBot does
    except Exception as exc:
        raise BenchError(f"{side.name}: no answer over stdio: {type(exc).__name__}: {exc}") from exc


async def end(side: Side) -> str:
    """Close the daemon's stdin, as LangBot does when it goes away, and wait for it to exit."""
    with contextlib.suppress(Exception):
        await side.connection.close()
    process = side.process
    outcome = "not started"
    if process is not None:
        try:
            outcome = f"exited {await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_SEC)} on stdin EOF"
        except TimeoutError:
            process.kill()
            outcome = f"killed: still running {EXIT_TIMEOUT_SEC:g} s after stdin EOF (exit {await process.wait()})"
    if side.task is not None:
        side.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await side.task
    return outcome


@contextlib.asynccontextmanager
async def stdio_sides(work: Path, shape: Shape, backend: str) -> AsyncIterator[dict[str, Side]]:
    commands = stdio_commands(work, shape.mount_root, backend, shape.image)
    names = {OURS: "ours (boxruntime) over stdio", THEIRS: "theirs (lbp box) over stdio"}
    sides = {name: Side(name, names[name], None) for name in SIDES}
    try:
        for name in SIDES:
            cwd = work / f"{name}-stdio-cwd"  # lbp box resolves data/box against its cwd
            cwd.mkdir()
            argv, env = commands[name]
            await spawn(sides[name], argv, env, cwd)
        yield sides
    finally:
        for side in sides.values():
            log(f"stopping {side.name}: {await end(side)}")


async def bench_warm_stdio(work: Path, shape: Shape, backend: str, rounds: int, warmup: int) -> dict[str, Any]:
    """``bench_warm`` with both daemons behind LangBot's stdio transport; errors per side."""
    log("warm exec over stdio: both daemons spawned by LangBot's StdioClientController")
    async with stdio_sides(work, shape, backend) as sides:
        samples = await bench_warm(sides, shape, rounds, warmup)
        return {**samples, "errors": {name: sides[name].errors for name in SIDES}}
