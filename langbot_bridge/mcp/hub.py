"""``McpHub``: the MCP servers of one bot, sharing one Box session.

The scope decides which servers share a sandbox: a session id template over ``{bot}``
(default ``mcp-{bot}``: one session per bot; a template without ``{bot}``, e.g.
``mcp-shared``, puts every bot's servers together, as LangBot does). A bot name that is not
plain (letters, digits, ``-``) is reduced to such characters and gets a ``.<hash>`` suffix,
so two bots never meet in one session by accident.

The session is created persistent (it outlives a bot's connection, so a restarted bot finds
its servers running and reuses them) and is never deleted by the hub; closing the hub stops
its servers' processes unless ``stop_on_close=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import string
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import mcp_types as types

from boxruntime.errors import BoxManagedProcessNotFoundError, BoxSessionNotFoundError, BoxValidationError
from boxruntime.models import ManagedProcessStatus
from langbot_bridge.mcp.server import BoxMcpServer, McpTiming
from langbot_bridge.mcp.spec import McpServerSpec
from langbot_bridge.mcp.transport import RelayPolicy
from langbot_bridge.service import BoxService

DEFAULT_SCOPE = "mcp-{bot}"
_PLAIN_BOT = re.compile(r"[A-Za-z0-9-]{1,64}")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9-]+")
_LITERAL = re.compile(r"[A-Za-z0-9_-]*")


def scope_session_id(template: str, bot: str) -> str:
    """The session id ``template`` gives for ``bot``; BoxValidationError says what is wrong."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise BoxValidationError(f"MCP scope {template!r} is malformed: {exc}") from None
    pieces: list[str] = []
    for literal, field, spec, conversion in parts:
        if not _LITERAL.fullmatch(literal):
            raise BoxValidationError(f"MCP scope {template!r}: literal text may only hold letters, digits, '_', '-'")
        pieces.append(literal)
        if field is None:
            continue
        if field != "bot" or spec or conversion:
            raise BoxValidationError(f"MCP scope {template!r}: the only variable is {{bot}}")
        pieces.append(_safe_bot(bot))
    session_id = "".join(pieces)
    if not session_id:
        raise BoxValidationError("the MCP scope gives an empty session id")
    return session_id


def _safe_bot(bot: str) -> str:
    if _PLAIN_BOT.fullmatch(bot):
        return bot
    readable = _UNSAFE_RUN.sub("-", bot)[:40].strip("-") or "bot"
    return f"{readable}.{hashlib.sha256(bot.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


class McpHub:
    """``async with McpHub(service, bot="helper") as hub: await hub.start(spec)``."""

    def __init__(
        self,
        service: BoxService,
        *,
        bot: str = "default",
        scope: str = DEFAULT_SCOPE,
        session_request: Mapping[str, Any] | None = None,
        relay_base_url: str | None = None,
        relay_policy: RelayPolicy | None = None,
        timing: McpTiming | None = None,
        stop_on_close: bool = True,
    ) -> None:
        self.service = service
        self.session_id = scope_session_id(scope, bot)
        self.session_request: dict[str, Any] = {"persistent": True, **(session_request or {})}
        self.relay_base_url = relay_base_url
        self.relay_policy = relay_policy
        self.timing = timing
        self.stop_on_close = stop_on_close
        self._servers: dict[str, BoxMcpServer] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def servers(self) -> dict[str, BoxMcpServer]:
        """The hub's servers, by name."""
        return dict(self._servers)

    def get(self, name: str) -> BoxMcpServer:
        """A started server; BoxValidationError naming the started ones if there is none."""
        server = self._servers.get(name)
        if server is None:
            known = ", ".join(sorted(self._servers)) or "none"
            raise BoxValidationError(f"no MCP server named {name!r} in this hub (started: {known})")
        return server

    # ── lifecycle ─────────────────────────────────────────────────────────

    async def __aenter__(self) -> McpHub:
        if self._stack is not None:
            raise RuntimeError("an McpHub can be entered only once")
        self._stack = contextlib.AsyncExitStack()
        self._task_group = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect every server (stopping their processes when ``stop_on_close``)."""
        if self._stack is None:
            return
        try:
            for name in list(self._servers):
                with contextlib.suppress(Exception):  # one server's failure must not keep the others running
                    await self._servers.pop(name).close(stop=self.stop_on_close)
        finally:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def start(self, spec: McpServerSpec | Mapping[str, Any]) -> BoxMcpServer:
        """Start (or reuse, reconnect or restart) the server ``spec`` names, in the shared session.

        Same name and spec as a running one: that server. A changed spec: the old process is
        stopped and the new one started. One that crashed: started again.
        """
        if self._task_group is None:
            raise RuntimeError("enter the McpHub (async with) before starting servers")
        spec = spec if isinstance(spec, McpServerSpec) else McpServerSpec.model_validate(spec)
        async with self._locks.setdefault(spec.name, anyio.Lock()):
            existing = self._servers.get(spec.name)
            if existing is not None and existing.spec == spec:
                await self._revive(existing)
                return existing
            if existing is not None:
                del self._servers[spec.name]
                await existing.close(stop=True)
            server = BoxMcpServer(
                self.service,
                self.session_id,
                spec,
                session_request=self.session_request,
                relay_base_url=self.relay_base_url,
                relay_policy=self.relay_policy,
                timing=self.timing,
                stop_on_close=self.stop_on_close,
            )
            await server.start(self._task_group)
            self._servers[spec.name] = server
            return server

    async def _revive(self, server: BoxMcpServer) -> None:
        if server.healthy:
            return
        try:
            running = (await server.status()).status == ManagedProcessStatus.RUNNING
        except (BoxManagedProcessNotFoundError, BoxSessionNotFoundError):
            running = False
        if running:
            await server.reconnect()
        else:
            await server.restart()

    async def stop(self, name: str) -> None:
        """Disconnect the server and stop its process."""
        server = self.get(name)
        async with self._locks.setdefault(name, anyio.Lock()):
            self._servers.pop(name, None)
            await server.close(stop=True)

    # ── across servers ────────────────────────────────────────────────────

    async def list_tools(self) -> dict[str, list[types.Tool]]:
        """Every server's tools, by server name."""
        return {name: await server.list_tools() for name, server in self.servers.items()}

    async def call_tool(
        self, server: str, tool: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> types.CallToolResult:
        """Call ``tool`` of ``server`` with ``arguments``."""
        return await self.get(server).call_tool(tool, arguments, timeout=timeout)
