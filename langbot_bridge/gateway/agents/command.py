"""The ``command`` agent: no model. ``/sh <command>`` runs in the chat's sandbox and the reply
is its output (stdout and stderr as they came, cut to fit a chat message, with the exit status
when it is not 0). For operators, and for testing a gateway end to end without an LLM.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic

from boxruntime.errors import BoxError
from boxruntime.models import DEFAULT_MOUNT_PATH, ExecResult, ExecStatus, OutputChunk
from langbot_bridge.client import chunk_bytes
from langbot_bridge.gateway.agents.base import (
    AgentDeps,
    AgentKind,
    AgentReply,
    AgentRunner,
    AgentSettings,
    TurnInput,
    failure_reply,
)


class CommandSettings(AgentSettings):
    kind: Literal["command"] = "command"
    prefix: str = pydantic.Field(default="/sh", min_length=1)
    workdir: str = DEFAULT_MOUNT_PATH
    timeout_sec: int | None = pydantic.Field(default=None, ge=1)  # default: the profile's
    help: str = "Send /sh <command> to run it in this chat's sandbox."


def _status(result: ExecResult) -> str:
    if result.status == ExecStatus.TIMED_OUT:
        return f"[timed out after {result.duration_ms / 1000:g} s]"
    if result.signal:
        return f"[killed by signal {result.signal}]"
    if result.exit_code not in (0, None):
        return f"[exit code {result.exit_code}]"
    return ""


class CommandRunner(AgentRunner):
    def __init__(self, settings: CommandSettings, deps: AgentDeps) -> None:
        self.settings = settings
        self.service = deps.service

    def _command(self, text: str) -> str | None:
        prefix = self.settings.prefix
        stripped = text.strip()
        if stripped == prefix or not stripped.startswith(prefix):
            return None
        rest = stripped[len(prefix) :]
        return rest.strip() if rest[:1].isspace() and rest.strip() else None

    async def run(self, turn: TurnInput) -> AgentReply:
        command = self._command(turn.inbound.text)
        if command is None:
            saved = [line for line in turn.prompt.splitlines() if line.startswith("[file ")]
            return AgentReply("\n".join(saved) if saved else self.settings.help)
        request: dict[str, Any] = {"workdir": self.settings.workdir}
        if self.settings.timeout_sec is not None:
            request["timeout_sec"] = self.settings.timeout_sec
        try:
            if turn.stream.enabled:
                output, result = await self._streamed(turn, command, request)
            else:
                result = await self.service.exec(
                    turn.session_id, command, request, chat=turn.chat, actor="gateway:command"
                )
                output = result.stdout + result.stderr
        except BoxError as exc:
            return AgentReply(failure_reply("the command", exc))
        text = self.service.truncate(output).text.rstrip("\n")
        status = _status(result)
        reply = "\n".join(part for part in (text, status) if part)
        return AgentReply(reply or "(no output)")

    async def _streamed(self, turn: TurnInput, command: str, request: dict[str, Any]) -> tuple[str, ExecResult]:
        pieces: list[str] = []
        result: ExecResult | None = None
        async for item in self.service.exec_stream(
            turn.session_id, command, request, chat=turn.chat, actor="gateway:command"
        ):
            if isinstance(item, OutputChunk):
                pieces.append(chunk_bytes(item).decode("utf-8", "replace"))
                await turn.stream.update(self.service.truncate("".join(pieces)).text)
            else:
                result = item.result
        if result is None:
            raise BoxError("the daemon ended the output stream without a result")
        return "".join(pieces), result


KIND = AgentKind("command", CommandSettings, CommandRunner)
