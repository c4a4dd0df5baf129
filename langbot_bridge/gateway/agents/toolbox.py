"""The tools a model is offered in a chat: the bridge's sandbox tools (``BoxTools``: exec, read,
write, edit, glob, grep, all in the chat's sandbox) and the tools of the gateway's MCP servers,
which run in the box too (``McpHub``, one session shared by the gateway's chats).

MCP tools are named ``mcp__<server>__<tool>`` for the model (OpenAI function names allow
letters, digits, ``_`` and ``-``, up to 64 characters); a name that does not fit is reduced and
given a short hash. Every call returns text for the model; failures are results too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from boxruntime.errors import BoxError
from langbot_bridge.mcp import McpHub, McpServerError, McpServerSpec
from langbot_bridge.service import BoxService
from langbot_bridge.templates import ChatContext
from langbot_bridge.tools import ALL_TOOLS, BoxTools

log = logging.getLogger(__name__)

MCP_PREFIX = "mcp__"
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
TOOL_RESULT_MAX_CHARS = 16_000


def function_name(server: str, tool: str) -> str:
    name = f"{MCP_PREFIX}{server}__{tool}"
    if _FUNCTION_NAME.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', name)[:55]}_{digest}"


class Toolbox:
    """Definitions and dispatch for one gateway; ``async with`` owns the MCP hub."""

    def __init__(
        self,
        service: BoxService,
        *,
        bot: str,
        box_tools: Sequence[str],
        mcp_servers: Sequence[McpServerSpec],
        mcp_session: Mapping[str, Any],
    ) -> None:
        unknown = sorted(set(box_tools) - {tool.name for tool in ALL_TOOLS})
        if unknown:
            raise BoxError(f"unknown sandbox tools {unknown}")
        self.box = BoxTools(service, [tool for tool in ALL_TOOLS if tool.name in box_tools], actor_prefix="gateway")
        self.specs = list(mcp_servers)
        self.hub = McpHub(service, bot=bot, session_request=mcp_session) if self.specs else None
        self._mcp_tools: dict[str, tuple[str, str, dict[str, Any]]] = {}  # function -> server, tool, definition
        self._lock = anyio.Lock()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Toolbox:
        if self.hub is not None:
            await self._stack.enter_async_context(self.hub)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _refresh_mcp(self) -> None:
        """Start (or revive) the MCP servers and list their tools; a server that fails is left
        out of this turn and tried again on the next one."""
        if self.hub is None:
            return
        async with self._lock:
            found: dict[str, tuple[str, str, dict[str, Any]]] = {}
            for spec in self.specs:
                try:
                    server = await self.hub.start(spec)
                    tools = await server.list_tools()
                except (BoxError, McpServerError) as exc:
                    log.warning("MCP server %s is unavailable this turn: %s", spec.name, exc)
                    continue
                for tool in tools:
                    name = function_name(spec.name, tool.name)
                    definition = {
                        "type": "function",
                        "function": {
                            "name": name,
                            "description": (tool.description or f"{tool.name} from MCP server {spec.name}")[:1024],
                            "parameters": tool.input_schema or {"type": "object", "properties": {}},
                        },
                    }
                    found[name] = (spec.name, tool.name, definition)
            self._mcp_tools = found

    async def definitions(self) -> list[dict[str, Any]]:
        """Tools to offer now: none while the Box runtime is unavailable."""
        if not self.box.service.available:
            return []
        await self._refresh_mcp()
        return self.box.definitions() + [definition for _, _, definition in self._mcp_tools.values()]

    async def call(self, name: str, arguments: str, chat: ChatContext) -> str:
        if name in self._mcp_tools and self.hub is not None:
            server, tool, _ = self._mcp_tools[name]
            return _cut(await self._call_mcp(server, tool, arguments))
        return _cut(json.dumps(await self.box.call(name, arguments, chat), ensure_ascii=False))

    async def _call_mcp(self, server: str, tool: str, arguments: str) -> str:
        assert self.hub is not None
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
            if not isinstance(parsed, dict):
                raise ValueError("arguments must be a JSON object")
            result = await self.hub.call_tool(server, tool, parsed)
        except ValueError as exc:
            return json.dumps({"ok": False, "error": f"bad arguments for {tool}: {exc}"})
        except (BoxError, McpServerError) as exc:
            return json.dumps({"ok": False, "error": str(exc)})
        texts = [getattr(item, "text", None) or item.model_dump_json() for item in result.content]
        return json.dumps({"ok": not result.is_error, "content": "\n".join(texts)}, ensure_ascii=False)

    def diagnostics(self) -> dict[str, Any]:
        return {"sandbox_tools": list(self.box.tools), "mcp_tools": sorted(self._mcp_tools)}


def _cut(text: str) -> str:
    if len(text) <= TOOL_RESULT_MAX_CHARS:
        return text
    return text[:TOOL_RESULT_MAX_CHARS] + f"... [{len(text) - TOOL_RESULT_MAX_CHARS} characters cut]"
