"""langbot-plugin 0.7.16's own Box client (the one LangBot 4.11.2 pins), wired to our daemon the
way LangBot 4.11.2's ``BoxRuntimeConnector`` wires it (reference §A.8, §E.1):

- WebSocket: their ``WebSocketClientController`` with LangBot's headers (``X-LangBot-Instance-Id``
  and ``X-LangBot-Box-Control-Token``);
- stdio: their ``StdioClientController`` spawning the daemon with LangBot's flags
  (``-s --ws-control-port N``) and LangBot's environment (``LANGBOT_BOX_CONTROL_TOKEN``,
  ``LANGBOT_BOX_TRUSTED_INSTANCE_UUID``, ``LANGBOT_BOX_CONFIG``).

On either, their generic ``Handler`` runs on the connection, pings, sends ``box_init`` with the
box config (as the connector does whenever the config is not empty), and an
``ActionRPCBoxClient`` calls through it. Nothing here replaces any of their code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langbot_plugin.box.actions import LangBotToBoxAction
from langbot_plugin.box.client import ActionRPCBoxClient
from langbot_plugin.box.security import (
    BOX_CONTROL_TOKEN_ENV,
    BOX_CONTROL_TOKEN_HEADER,
    BOX_INSTANCE_HEADER,
    BOX_PLACEMENT_GENERATION_HEADER,
    BOX_TRUSTED_INSTANCE_ENV,
    BOX_WORKSPACE_HEADER,
)
from langbot_plugin.box.tenancy import box_namespace, namespace_session_id
from langbot_plugin.entities.io.actions.enums import CommonAction
from langbot_plugin.entities.io.context import ActionContext
from langbot_plugin.runtime.io.connection import Connection
from langbot_plugin.runtime.io.controller import Controller
from langbot_plugin.runtime.io.controllers.stdio.client import StdioClientController
from langbot_plugin.runtime.io.controllers.ws.client import WebSocketClientController
from langbot_plugin.runtime.io.handler import Handler

from langbot4_tests.daemon import MAIN_PYTHON, TOKEN, daemon_settings, free_port, stdio_args

LOGGER = logging.getLogger("langbot4.box")
INSTANCE = "lb4-instance-1"
# LangBot waits 30 s for its connection; a fresh daemon that also cleans up orphans on a machine
# shared with other Docker-heavy runs gets more here.
CONNECT_TIMEOUT = 90.0


def context(workspace: str, generation: int = 1, instance: str = INSTANCE) -> ActionContext:
    """LangBot's envelope context for one workspace placement."""
    return ActionContext(instance_uuid=instance, workspace_uuid=workspace, placement_generation=generation)


def tenant_directory(default_workspace: Path, workspace: str, instance: str = INSTANCE) -> Path:
    """``<default_workspace>/tenants/ws-<24 hex>``: where LangBot keeps a workspace's files."""
    return default_workspace / "tenants" / box_namespace(context(workspace, instance=instance))


def physical_id(workspace: str, logical: str, generation: int = 1, instance: str = INSTANCE) -> str:
    return namespace_session_id(context(workspace, generation, instance), logical)


def control_headers(instance: str = INSTANCE, token: str | None = TOKEN) -> dict[str, str]:
    """What LangBot's connector sends on ``/rpc/ws`` (``get_control_headers``)."""
    headers = {BOX_INSTANCE_HEADER: instance}
    if token:
        headers[BOX_CONTROL_TOKEN_HEADER] = token
    return headers


def relay_headers(ctx: ActionContext, token: str | None = TOKEN) -> dict[str, str]:
    """What LangBot's connector sends on the relay (``get_relay_headers``)."""
    return {
        **control_headers(ctx.instance_uuid, token),
        BOX_WORKSPACE_HEADER: ctx.workspace_uuid,
        BOX_PLACEMENT_GENERATION_HEADER: str(ctx.placement_generation),
    }


def box_config(
    host_root: Path, backend: str = "docker", *, more_roots: tuple[Path, ...] = (), **extra: Any
) -> dict[str, Any]:
    """LangBot's ``box`` section as it forwards it (``runtime`` left out): the backend, the host
    root whose ``default`` directory holds the tenant workspaces, the roots mounts may come from
    (LangBot's template allows ``./data/box`` and ``/tmp``)."""
    return {
        "backend": backend,
        "local": {
            "host_root": str(host_root),
            "default_workspace": str(host_root / "default"),
            "allowed_mount_roots": [str(host_root), *map(str, more_roots)],
        },
        **extra,
    }


@dataclass
class LangBotLink:
    """One live LangBot-side control connection."""

    connection: Connection
    handler: Handler
    client: ActionRPCBoxClient
    relay_base: str
    process: asyncio.subprocess.Process | None = None
    exit_code: int | None = field(default=None, init=False)

    async def call(self, action: Any, data: dict[str, Any], ctx: ActionContext | None = None) -> dict[str, Any]:
        """A raw call through their Handler (what ActionRPCBoxClient's _call does, untranslated)."""
        return await self.handler.call_action(action, data, timeout=60.0, action_context=ctx)

    def relay_url(self, ctx: ActionContext, session_id: str, process_id: str) -> str:
        """LangBot's relay URL: built by the client from the logical id (the physical id goes in)."""
        return self.client.get_managed_process_websocket_url(
            session_id, self.relay_base, process_id, action_context=ctx
        )


@contextlib.asynccontextmanager
async def _handler_on(
    connection: Connection, relay_base: str, config: dict[str, Any] | None
) -> AsyncIterator[LangBotLink]:
    handler = Handler(connection)
    reader = asyncio.create_task(handler.run(), name="langbot-handler")
    client = ActionRPCBoxClient(LOGGER)
    client.set_handler(handler)
    link = LangBotLink(connection, handler, client, relay_base)
    try:
        await handler.call_action(CommonAction.PING, {}, timeout=CONNECT_TIMEOUT)
        if config:
            await handler.call_action(LangBotToBoxAction.INIT, config, timeout=CONNECT_TIMEOUT)
        yield link
    finally:
        with contextlib.suppress(Exception):
            await handler.close()
        try:
            await asyncio.wait_for(reader, 30)
        except (TimeoutError, asyncio.CancelledError):
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


class ControllerFailed(Exception):
    """LangBot's controller reported a failed connection (``make_connection_failed_callback``)."""

    def __init__(self, cause: Exception | None) -> None:
        super().__init__(repr(cause))
        self.cause = cause


@contextlib.asynccontextmanager
async def over_websocket(
    url: str, headers: dict[str, str], relay_base: str, config: dict[str, Any] | None = None
) -> AsyncIterator[LangBotLink]:
    """Their WebSocketClientController with LangBot's headers; the websocket lives while the
    connection callback runs, as in LangBot's connector. A refused upgrade raises
    ControllerFailed with the controller's exception."""
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[Connection] = loop.create_future()
    release = asyncio.Event()

    async def on_connection(connection: Connection) -> None:
        connected.set_result(connection)
        await release.wait()

    async def on_failed(_: Controller, exc: Exception | None) -> None:
        if not connected.done():
            connected.set_exception(ControllerFailed(exc))

    controller = WebSocketClientController(url, on_failed, additional_headers=headers)
    running = asyncio.create_task(controller.run(on_connection), name="langbot-ws-controller")
    try:
        connection = await asyncio.wait_for(connected, CONNECT_TIMEOUT)
        async with _handler_on(connection, relay_base, config) as link:
            yield link
    finally:
        release.set()
        try:
            await asyncio.wait_for(running, 30)
        except TimeoutError:
            running.cancel()


def stdio_env(data_dir: Path, config: dict[str, Any] | None, instance: str = INSTANCE) -> dict[str, str]:
    """LangBot's environment for its local Box runtime: a copy of its own, its control token,
    its pinned instance, its box config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOXRUNTIME_", "LANGBOT_BOX_"))}
    env.update(daemon_settings(data_dir))
    env[BOX_CONTROL_TOKEN_ENV] = TOKEN
    env[BOX_TRUSTED_INSTANCE_ENV] = instance
    if config:
        env["LANGBOT_BOX_CONFIG"] = json.dumps(config)
    return env


@contextlib.asynccontextmanager
async def over_stdio(
    data_dir: Path, cwd: Path, config: dict[str, Any] | None, instance: str = INSTANCE
) -> AsyncIterator[LangBotLink]:
    """Their StdioClientController spawning ``boxruntime serve -s --ws-control-port N``.

    On exit the controller closes stdin and reaps the process (its own escalation: 2 s, SIGTERM,
    2 s, SIGKILL); ``link.exit_code`` is the daemon's exit status.
    """
    relay_port = free_port()
    controller = StdioClientController(
        command=str(MAIN_PYTHON),
        args=stdio_args(relay_port),
        env=stdio_env(data_dir, config, instance),
        working_dir=str(cwd),
        capture_stderr=False,
    )
    handed: asyncio.Queue[Connection] = asyncio.Queue()
    release = asyncio.Event()

    async def on_connection(connection: Connection) -> None:
        handed.put_nowait(connection)
        await release.wait()

    running = asyncio.create_task(controller.run(on_connection), name="langbot-stdio-controller")
    link: LangBotLink | None = None
    try:
        connection = await asyncio.wait_for(handed.get(), CONNECT_TIMEOUT)
        process = controller.process
        async with _handler_on(connection, f"http://127.0.0.1:{relay_port}", config) as link:
            link.process = process
            yield link
    finally:
        release.set()
        await asyncio.wait_for(running, 60)
        if link is not None and link.process is not None:
            link.exit_code = link.process.returncode
