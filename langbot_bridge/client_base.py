"""What every part of ``BoxClient`` shares: the link it calls through, and one validated call (or
stream) per catalogue entry (``boxruntime.models.actions``): the request dumped with the entry's
model, the reply read with it, the entry's wait unless the call says otherwise."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol, TypeVar

import pydantic

from boxruntime.errors import ActionCallError
from boxruntime.models.action_kinds import Streamed, Unary
from boxruntime.protocol.peer import Payload

Q = TypeVar("Q")
R = TypeVar("R")
I = TypeVar("I")  # noqa: E741 - a stream's item


class ActionCaller(Protocol):
    """What the client needs from a link: ``Connector`` and ``Peer`` both fit."""

    async def call(self, action: str, data: Payload, timeout: float = ...) -> Payload:
        """Call ``action`` with ``data``; its reply, or the daemon's error as its typed class."""

    def call_stream(self, action: str, data: Payload, timeout: float = ...) -> AsyncIterator[Payload]:
        """Call a streamed ``action``; each chunk of its reply as it arrives."""


class ClientBase:
    """A client over ``caller``: one validated call per action."""

    def __init__(self, caller: ActionCaller) -> None:
        self.caller = caller

    async def _call(self, action: Unary[Q, R], request: Q, timeout: float | None = None) -> R:
        reply = await self.caller.call(action.name, action.request.dump(request), _wait(action, timeout))
        try:
            return action.response.parse(reply)
        except pydantic.ValidationError as exc:
            raise ActionCallError(f"unexpected reply to {action.name}: {exc}") from None

    async def _stream(
        self, action: Streamed[Q, I], request: Q, timeout: float | None = None
    ) -> AsyncGenerator[I, None]:
        """The items of a streamed action; the timeout bounds each wait for the next one."""
        stream = self.caller.call_stream(action.name, action.request.dump(request), _wait(action, timeout))
        try:
            async for item in stream:
                try:
                    yield action.items.parse(item)
                except pydantic.ValidationError as exc:
                    raise ActionCallError(f"unexpected item in {action.name}: {exc}") from None
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


def _wait(action: Unary[Q, R] | Streamed[Q, I], timeout: float | None) -> float:
    return action.timeout if timeout is None else timeout
