"""What every agent tool shares: its argument model (which is also its JSON schema), the scope
it runs in, and how failures become results.

A tool result is a JSON-serialisable dict with ``ok``; when ``ok`` is false, ``error`` says
what went wrong in words a model can act on. Arguments are validated by the tool's pydantic
model before anything runs; the same model, minus pydantic's titles, is the ``parameters``
schema of the OpenAI function-calling definition.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic

from langbot_bridge.service import BoxService
from langbot_bridge.templates import ChatContext


class ToolError(Exception):
    """A failure the model should read: bad arguments, a missing match, a file too large ..."""


class ToolArgs(pydantic.BaseModel):
    """A tool's arguments: validated before it runs, and its JSON schema for the model."""

    model_config = pydantic.ConfigDict(extra="forbid")


class ToolResult(pydantic.BaseModel):
    """What a tool answers: ``ok``, and ``error`` in words a model can act on when not."""

    ok: bool = True
    error: str | None = None


A = TypeVar("A", bound=ToolArgs)


@dataclass(frozen=True, slots=True)
class ToolScope:
    """Where a tool call runs: the chat, its session, and who asked (for the audit log)."""

    service: BoxService
    chat: ChatContext
    session_id: str
    actor: str


def openai_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The model's JSON schema without the ``title`` keys pydantic adds, and without the class
    docstring (written for developers; the tool's own description is the model's)."""
    schema: dict[str, Any] = _untitled(model.model_json_schema())
    schema.pop("description", None)
    return schema


def _untitled(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _untitled(value) for key, value in node.items() if key != "title"}
    if isinstance(node, list):
        return [_untitled(item) for item in node]
    return node


def describe_validation_error(tool: str, exc: pydantic.ValidationError) -> str:
    """The problems pydantic found in a tool's arguments, in one line for the model."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        problems.append(f"{where}: {error['msg']}")
    return f"invalid arguments for {tool}: " + "; ".join(problems)


@dataclass(frozen=True, slots=True)
class Tool(Generic[A]):
    name: str
    description: str
    args: type[A]
    run: Callable[[A, ToolScope], Awaitable[ToolResult]]

    def definition(self) -> dict[str, Any]:
        """The OpenAI function-calling definition."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": openai_schema(self.args)},
        }

    def parse(self, arguments: dict[str, Any]) -> A:
        """The arguments validated; ToolError saying what is wrong otherwise."""
        try:
            return self.args.model_validate(arguments)
        except pydantic.ValidationError as exc:
            raise ToolError(describe_validation_error(self.name, exc)) from None
