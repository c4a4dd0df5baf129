"""Agent tools — exec, read, write, edit, glob, grep — every one run inside the chat's sandbox.

``BoxTools`` is what a bot hands its LLM: ``definitions()`` for the request (OpenAI function
calling; empty while the Box runtime is unavailable, so the model is not offered tools that
cannot work) and ``call()`` to run one. ``call`` always returns a JSON-serialisable dict with
``ok``; failures — bad arguments, daemon errors, an unavailable runtime — come back as
``{"ok": false, "error": ...}`` rather than exceptions, so the model can read and react.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from boxruntime.errors import BoxError
from langbot_bridge.service import BoxService
from langbot_bridge.templates import ChatContext
from langbot_bridge.tools.base import Tool, ToolError, ToolResult, ToolScope
from langbot_bridge.tools.files import EDIT, READ, WRITE
from langbot_bridge.tools.search import GLOB, GREP
from langbot_bridge.tools.shell import EXEC

log = logging.getLogger(__name__)

ALL_TOOLS: tuple[Tool[Any], ...] = (EXEC, READ, WRITE, EDIT, GLOB, GREP)


def failure(error: str) -> dict[str, Any]:
    """A failed tool result saying ``error``."""
    return ToolResult(ok=False, error=error).model_dump(mode="json")


class BoxTools:
    """The sandbox tools for an LLM (exec, read, write, edit, glob, grep), each chat in its own session."""

    def __init__(self, service: BoxService, tools: Sequence[Tool[Any]] = ALL_TOOLS, actor_prefix: str = "tool") -> None:
        self.service = service
        self.tools = {tool.name: tool for tool in tools}
        self.actor_prefix = actor_prefix

    def definitions(self) -> list[dict[str, Any]]:
        """The tools to offer a model now: none while the Box runtime is unavailable."""
        if not self.service.available:
            return []
        return [tool.definition() for tool in self.tools.values()]

    async def call(self, name: str, arguments: Mapping[str, Any] | str, chat: ChatContext) -> dict[str, Any]:
        """Run tool ``name`` for ``chat``; ``arguments`` as a dict or the model's JSON text."""
        tool = self.tools.get(name)
        if tool is None:
            return failure(f"unknown tool {name!r}; available: {', '.join(self.tools)}")
        try:
            parsed = tool.parse(_arguments(name, arguments))
            if not self.service.available:
                raise ToolError(f"{self.service.unavailable_reason()}; sandbox tools are unavailable until it is back")
            scope = ToolScope(self.service, chat, self.service.session_id_for(chat), f"{self.actor_prefix}:{name}")
            result = await tool.run(parsed, scope)
        except ToolError as exc:
            return failure(str(exc))
        except BoxError as exc:
            return failure(str(exc))
        except Exception as exc:  # a tool bug must not take the bot's turn down with it
            log.exception("tool %s failed unexpectedly", name)
            return failure(f"internal error in tool {name}: {type(exc).__name__}: {exc}")
        return result.model_dump(mode="json")


def _arguments(name: str, arguments: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise ToolError(f"arguments for {name} are not valid JSON: {exc}") from None
        arguments = decoded
    if not isinstance(arguments, Mapping):
        raise ToolError(f"arguments for {name} must be a JSON object")
    return dict(arguments)


__all__ = ["ALL_TOOLS", "BoxTools", "Tool", "ToolError", "ToolResult", "ToolScope"]
