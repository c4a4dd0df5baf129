"""Agent runners by ``[agent] kind``: ``openai`` (any OpenAI-compatible chat-completions model with
the sandbox tools), ``command`` (``/sh`` for operators and tests), ``acp`` (an Agent Client Protocol agent living in
the chat's sandbox). More kinds register here."""

from __future__ import annotations

from langbot_bridge.gateway.agents.base import (
    AgentDeps,
    AgentKind,
    AgentReply,
    AgentRunner,
    AgentSettings,
    AgentState,
    ReplyStream,
    TurnInput,
    failure_reply,
)
from langbot_bridge.gateway.registry import Registry

AGENTS: Registry[AgentKind] = Registry(
    "agent",
    {
        "command": "langbot_bridge.gateway.agents.command",
        "openai": "langbot_bridge.gateway.agents.openai_runner",
        "acp": "langbot_bridge.gateway.agents.acp_runner",
    },
)

__all__ = [
    "AGENTS",
    "AgentDeps",
    "AgentKind",
    "AgentReply",
    "AgentRunner",
    "AgentSettings",
    "AgentState",
    "ReplyStream",
    "TurnInput",
    "failure_reply",
]
