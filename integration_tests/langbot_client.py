"""LangBot 0.5.0a2's own Box client, wired to a daemon exactly as LangBot wires it.

LangBot's connector opens a transport with one of its controllers, builds its generic
``Handler`` on the ``Connection`` the controller hands over, runs ``handler.run()`` in the
background, pings, and gives the handler to an ``ActionRPCBoxClient``. Nothing here replaces
any of their code: these helpers only start, hold and end that wiring.

``Handler.__init__`` creates ``data/temp/lbp`` relative to the current directory, so callers
chdir into a scratch directory first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from langbot_plugin.box.client import ActionRPCBoxClient
from langbot_plugin.entities.io.actions.enums import CommonAction
from langbot_plugin.runtime.io.connection import Connection
from langbot_plugin.runtime.io.connections.ws import WebSocketConnection
from langbot_plugin.runtime.io.controller import Controller
from langbot_plugin.runtime.io.controllers.stdio.client import StdioClientController
from langbot_plugin.runtime.io.controllers.ws.client import WebSocketClientController
from langbot_plugin.runtime.io.handler import Handler

from integration_tests.daemon import daemon_env

LOGGER = logging.getLogger("langbot.box.conformance")

# How long to wait for a transport to come up and answer its first ping. Generous: the stdio
# daemon is a fresh Python process that also cleans up orphans before it reads stdin, and the
# machine is shared with other Docker-heavy test runs.
CONNECT_TIMEOUT = 120.0
# How long a daemon may take to exit by itself once stdin is closed (it removes its containers).
EXIT_TIMEOUT = 120.0


def stdio_args(backend: str) -> list[str]:
    """Docker is asked for by name; nsjail is reached the way LangBot would: the daemon starts on
    ``local`` and the client's ``box_init {"backend": "nsjail"}`` selects it."""
    return ["-m", "boxruntime", "serve", "--stdio", "--backend", "docker" if backend == "docker" else "local"]


@dataclass
class LangBotLink:
    """One live LangBot-side connection: their connection, handler and Box client."""

    connection: Connection
    handler: Handler
    client: ActionRPCBoxClient
    process: asyncio.subprocess.Process | None = None
    backend: str = "docker"  # which sandbox backend the daemon behind this link serves
    exit_code: int | None = field(default=None, init=False)

    def new_client(self) -> ActionRPCBoxClient:
        """A second ActionRPCBoxClient on the same handler, as LangBot builds after a reconnect."""
        client = ActionRPCBoxClient(LOGGER)
        client.set_handler(self.handler)
        return client

    async def call(self, action: Any, data: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """A raw action call through their Handler (for payloads their models would refuse)."""
        return await self.handler.call_action(action, data, timeout=timeout)


@contextlib.asynccontextmanager
async def _handler_on(
    connection: Connection, process: asyncio.subprocess.Process | None = None
) -> AsyncIterator[LangBotLink]:
    handler = Handler(connection)
    reader = asyncio.create_task(handler.run(), name="langbot-handler")
    client = ActionRPCBoxClient(LOGGER)
    client.set_handler(handler)
    link = LangBotLink(connection, handler, client, process)
    try:
        # LangBot's connector pings before it calls anything else (reference §A.8).
        await handler.call_action(CommonAction.PING, {}, timeout=CONNECT_TIMEOUT)
        yield link
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
        try:
            await asyncio.wait_for(reader, 30)
        except (TimeoutError, asyncio.CancelledError):
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@contextlib.asynccontextmanager
async def over_websocket(url: str) -> AsyncIterator[LangBotLink]:
    """LangBot 0.5's own WebSocketClientController: no headers, 1 MiB max_size, 64 KiB slices."""
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[Connection] = loop.create_future()
    release = asyncio.Event()

    async def on_connection(connection: Connection) -> None:
        connected.set_result(connection)
        # The websocket lives only while this callback runs, as in LangBot's connector.
        await release.wait()

    async def on_failed(_: Controller, exc: Exception | None) -> None:
        if not connected.done():
            connected.set_exception(exc or ConnectionError("WebSocketClientController failed"))
        else:
            LOGGER.warning("LangBot WebSocket controller ended with %r", exc)

    controller = WebSocketClientController(url, on_failed)
    running = asyncio.create_task(controller.run(on_connection), name="langbot-ws-controller")
    try:
        connection = await asyncio.wait_for(connected, CONNECT_TIMEOUT)
        async with _handler_on(connection) as link:
            yield link
    finally:
        release.set()
        try:
            await asyncio.wait_for(running, 30)
        except TimeoutError:
            running.cancel()


@contextlib.asynccontextmanager
async def over_websocket_with_headers(url: str, headers: dict[str, str]) -> AsyncIterator[LangBotLink]:
    """A websocket opened with extra upgrade headers (a control token), then LangBot's own
    WebSocketConnection + Handler + ActionRPCBoxClient on it."""
    async with (
        websockets.connect(
            url, additional_headers=headers, max_size=16 * 1024 * 1024, open_timeout=30, proxy=None
        ) as websocket,
        _handler_on(WebSocketConnection(websocket)) as link,
    ):
        yield link


@contextlib.asynccontextmanager
async def over_stdio(
    data_dir: Path, cwd: Path, backend: str = "docker", env: dict[str, str] | None = None
) -> AsyncIterator[LangBotLink]:
    """LangBot 0.5's own StdioClientController spawning ``boxruntime serve --stdio``.

    On exit stdin is closed (what LangBot does when it goes away) and the daemon is given
    ``EXIT_TIMEOUT`` seconds to exit by itself; ``link.exit_code`` is then its exit status,
    or None if it had to be killed. ``env``: more of the daemon's environment.
    """
    controller = StdioClientController(
        command=sys.executable, args=stdio_args(backend), env=daemon_env(data_dir, **(env or {})), working_dir=str(cwd)
    )
    handed: list[Connection] = []

    async def on_connection(connection: Connection) -> None:
        handed.append(connection)

    await controller.run(on_connection)
    process = controller.process
    assert process is not None and len(handed) == 1
    link: LangBotLink | None = None
    try:
        async with _handler_on(handed[0], process) as link:
            yield link
    finally:
        # _handler_on closed the connection, i.e. the daemon's stdin.
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            code: int | None = await asyncio.wait_for(process.wait(), EXIT_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            code = None
        if link is not None:
            link.exit_code = code
