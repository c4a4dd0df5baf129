"""What every part of ``BoxClient`` shares: the link it calls through, one validated call, and
how long each kind of action may take."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

import pydantic

from boxruntime.errors import ActionCallError
from boxruntime.protocol.peer import DEFAULT_TIMEOUT, Payload

M = TypeVar("M", bound=pydantic.BaseModel)

# Client-side waits (reference §B.1 / §E.7), longer where our daemon may do more.
SESSION_START_TIMEOUT = 120.0  # creating a sandbox: image resolution, container, agent start
DELETE_TIMEOUT = 60.0
PROCESS_TIMEOUT = 60.0  # starting or stopping (SIGTERM, grace, SIGKILL) a managed process
SHUTDOWN_TIMEOUT = 120.0
FS_TIMEOUT = 60.0  # up to 8 MiB each way
SKILL_TIMEOUT = 60.0  # a store change copies and hashes a package
PREVIEW_TIMEOUT = 60.0  # LangBot's, for box_preview_skill_zip
INSTALL_TIMEOUT = 120.0  # LangBot's, for box_install_skill_zip
# Input is answered once the command has read it: as long as the command takes, bounded by its
# own end (which fails the call).
INPUT_TIMEOUT = 24 * 3600.0


class ActionCaller(Protocol):
    """What the client needs from a link: ``Connector`` and ``Peer`` both fit."""

    async def call(self, action: str, data: Payload, timeout: float = ...) -> Payload:
        """Call ``action`` with ``data``; its reply, or the daemon's error as its typed class."""

    def call_stream(self, action: str, data: Payload, timeout: float = ...) -> AsyncIterator[Payload]:
        """Call a streamed ``action``; each chunk of its reply as it arrives."""


def validated(model: type[M], action: str, data: Any) -> M:
    """``data`` as ``model``; ActionCallError saying what is wrong with the reply otherwise."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ActionCallError(f"unexpected reply to {action}: {exc}") from None


def dump(request: pydantic.BaseModel) -> Payload:
    """A request model as the wire's JSON object."""
    return request.model_dump(mode="json")


class ClientBase:
    """A client over ``caller``: one validated call per action."""

    def __init__(self, caller: ActionCaller) -> None:
        self.caller = caller

    async def _call(
        self, action: str, request: pydantic.BaseModel | None, reply: type[M], timeout: float = DEFAULT_TIMEOUT
    ) -> M:
        data = dump(request) if request is not None else {}
        return validated(reply, action, await self.caller.call(action, data, timeout))
