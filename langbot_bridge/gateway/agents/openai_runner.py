"""The ``openai`` agent: any OpenAI-compatible chat-completions endpoint, through the official
``openai`` SDK, with tool calling over the chat's sandbox (``Toolbox``).

A turn: system prompt (with the installed skills it may use) + the chat's history + the new
message; then up to ``max_turns`` rounds of model call -> tool calls run in the sandbox ->
results back to the model, until the model answers without tools. Text the model writes next
to its tool calls is streamed to channels that can show it. A failure of the model (HTTP error,
timeout, bad response) becomes a short reply; so does running out of rounds.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import openai
import pydantic

from boxruntime.errors import BoxError
from boxruntime.models import Skill
from langbot_bridge.gateway.agents.base import (
    AgentDeps,
    AgentKind,
    AgentReply,
    AgentRunner,
    AgentSettings,
    TurnInput,
    failure_reply,
)
from langbot_bridge.gateway.agents.toolbox import Toolbox
from langbot_bridge.gateway.config import read_secret
from langbot_bridge.mcp import McpServerSpec
from langbot_bridge.skills import SKILLS_DIR_NAME
from langbot_bridge.tools import ALL_TOOLS

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant in a chat. You have a private Linux sandbox for this chat: use "
    "the tools to run commands and work with files there (your working directory is /workspace). "
    "Files the user sent are in /workspace/inbox/. To send the user a file, write it to "
    "/workspace/outbox/; it goes out with your reply. Answer briefly."
)


class EmptyCompletionError(openai.OpenAIError):
    """The endpoint answered, but with nothing to use."""


class OpenAISettings(AgentSettings):
    kind: Literal["openai"] = "openai"
    base_url: str = "https://api.openai.com/v1"
    model: str = pydantic.Field(min_length=1)
    api_key_env: str = "OPENAI_API_KEY"  # "" for endpoints that take no key
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_turns: int = pydantic.Field(default=8, ge=1, le=100)  # model calls per message
    temperature: float | None = pydantic.Field(default=None, ge=0, le=2)
    timeout_sec: float = pydantic.Field(default=120, gt=0)
    max_retries: int = pydantic.Field(default=2, ge=0)
    tools: list[str] = pydantic.Field(default_factory=lambda: [tool.name for tool in ALL_TOOLS])
    mcp_servers: list[McpServerSpec] = pydantic.Field(default_factory=list)
    mcp_session: dict[str, Any] = pydantic.Field(default_factory=dict)  # spec fields of the MCP session
    skills_in_prompt: Literal["summary", "full"] = "summary"


def skills_prompt(skills: list[Skill], mode: str) -> str:
    if not skills:
        return ""
    lines = ["", "Skills installed in your sandbox (read a skill's file before using it):"]
    for skill in skills:
        where = f"/workspace/{SKILLS_DIR_NAME}/{skill.name}/{skill.entry_file}"
        lines.append(f"- {skill.name}: {skill.description} ({where})")
        if mode == "full" and skill.instructions:
            lines.append(skill.instructions.strip())
    return "\n".join(lines)


class OpenAIRunner(AgentRunner):
    uses_history = True

    def __init__(self, settings: OpenAISettings, deps: AgentDeps) -> None:
        self.settings = settings
        self.deps = deps
        api_key = read_secret(settings.api_key_env, "[agent] api_key_env", required=bool(settings.api_key_env))
        self.client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=api_key or "no-key",
            timeout=settings.timeout_sec,
            max_retries=settings.max_retries,
        )
        self.toolbox = Toolbox(
            deps.service,
            bot=deps.gateway_name,
            box_tools=settings.tools,
            mcp_servers=settings.mcp_servers,
            mcp_session=settings.mcp_session,
        )
        self.model_calls = 0
        self.model_errors = 0

    async def __aenter__(self) -> OpenAIRunner:
        await self.toolbox.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.toolbox.__aexit__(*exc)
        finally:
            await self.client.close()

    async def run(self, turn: TurnInput) -> AgentReply:
        skills = await self.deps.skills()
        system = self.settings.system_prompt + skills_prompt(skills, self.settings.skills_in_prompt)
        added: list[dict[str, Any]] = [{"role": "user", "content": turn.prompt}]
        try:
            tools = await self.toolbox.definitions()
            for _ in range(self.settings.max_turns):
                message = await self._complete([{"role": "system", "content": system}, *turn.history, *added], tools)
                calls = message.tool_calls or []
                entry: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
                if calls:
                    entry["tool_calls"] = [call.model_dump(mode="json", exclude_none=True) for call in calls]
                added.append(entry)
                if not calls:
                    return AgentReply(message.content or "(no answer)", added)
                if message.content:
                    await turn.stream.update(message.content)
                for call in calls:
                    function = getattr(call, "function", None)
                    if function is None:  # a custom tool call: nothing here can run it
                        result = '{"ok": false, "error": "only function tools are available"}'
                    else:
                        result = await self.toolbox.call(function.name, function.arguments, turn.chat)
                    added.append({"role": "tool", "tool_call_id": call.id, "content": result})
        except openai.OpenAIError as exc:
            self.model_errors += 1
            log.warning("model call failed: %s", exc)
            return AgentReply(failure_reply("the model", exc))
        except BoxError as exc:
            return AgentReply(failure_reply("the sandbox", exc))
        last = next((m["content"] for m in reversed(added) if m["role"] == "assistant" and m["content"]), "")
        note = f"(I stopped after {self.settings.max_turns} model calls without a final answer.)"
        return AgentReply(f"{last}\n\n{note}" if last else note, added)

    async def _complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        self.model_calls += 1
        kwargs: dict[str, Any] = {"model": self.settings.model, "messages": messages}
        if tools:
            kwargs["tools"] = tools
        if self.settings.temperature is not None:
            kwargs["temperature"] = self.settings.temperature
        completion = await self.client.chat.completions.create(**kwargs)
        if not completion.choices:
            raise EmptyCompletionError("the model returned no choices")
        return completion.choices[0].message

    def diagnostics(self) -> dict[str, Any]:
        return {
            "model": self.settings.model,
            "model_calls": self.model_calls,
            "model_errors": self.model_errors,
            **self.toolbox.diagnostics(),
        }


KIND = AgentKind("openai", OpenAISettings, OpenAIRunner)
