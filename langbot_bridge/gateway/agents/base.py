"""What an agent runner is: one turn in, one reply out, in the chat's sandbox.

The core prepares the turn (the chat's session exists, inbound files are in
``/workspace/inbox/``, history is loaded when the runner wants it) and takes care of what
happens after (files from ``/workspace/outbox/``, the outbox, history). A runner only decides
what to answer. It may show progress through ``TurnInput.stream`` on channels that stream.

A runner must not raise for failures of the model or the box: those become a short reply
(``failure_reply``) so the user is never left with silence. Anything it does raise is turned
into such a reply by the core as well.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Protocol

import pydantic

from boxruntime.models import Skill
from langbot_bridge.gateway.messages import Inbound
from langbot_bridge.service import BoxService
from langbot_bridge.templates import ChatContext


class ReplyStream(Protocol):
    @property
    def enabled(self) -> bool:
        """Whether updates reach anyone (the chat's channel streams); skip the work if not."""
        ...

    async def update(self, text: str) -> None:
        """The reply's whole text so far (channels that cannot stream ignore it)."""
        ...


@dataclass(frozen=True, slots=True)
class TurnInput:
    inbound: Inbound
    chat: ChatContext
    session_id: str
    prompt: str  # the user's text, with notes on attached files and unseen content
    stream: ReplyStream
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier turns (OpenAI message format)


@dataclass(frozen=True, slots=True)
class AgentReply:
    text: str
    history: list[dict[str, Any]] | None = None  # messages this turn adds to the chat's history


class StateStore(Protocol):
    async def load_state(self, owner: str, key: str) -> str | None: ...

    async def save_state(self, owner: str, key: str, value: str | None) -> None: ...


class AgentState:
    """Values a runner keeps across gateway restarts (per chat: an agent's session id), in the
    gateway's store under the runner's own name."""

    def __init__(self, store: StateStore, owner: str) -> None:
        self.store = store
        self.owner = owner

    async def load(self, key: str) -> str | None:
        """The value kept under ``key``, or None."""
        return await self.store.load_state(self.owner, key)

    async def save(self, key: str, value: str | None) -> None:
        """Keep ``value`` under ``key`` (None forgets it), committed on return."""
        await self.store.save_state(self.owner, key, value)


@dataclass(frozen=True, slots=True)
class AgentDeps:
    """What the gateway gives a runner."""

    service: BoxService
    gateway_name: str
    skills: Callable[[], Awaitable[list[Skill]]]  # the skills mounted in every chat's sandbox
    state: AgentState | None = None  # None only where no gateway store exists (unit tests)


class AgentRunner(abc.ABC):
    uses_history: ClassVar[bool] = False

    async def __aenter__(self) -> AgentRunner:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    @abc.abstractmethod
    async def run(self, turn: TurnInput) -> AgentReply: ...

    def diagnostics(self) -> dict[str, Any]:
        return {}


class AgentSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    kind: str


@dataclass(frozen=True, slots=True)
class AgentKind:
    name: str
    settings: type[AgentSettings]
    build: Callable[[Any, AgentDeps], AgentRunner]


def failure_reply(what: str, error: BaseException | str) -> str:
    """A short reply saying what failed, without a traceback or anything secret."""
    detail = (str(error).strip() or type(error).__name__) if isinstance(error, BaseException) else error
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return f"Sorry, {what} failed: {detail}"
