"""The channel adapter interface: what a platform adapter implements and what the core offers it.

Two shapes of channel fit it without touching the core:

- **Webhook channels** (WorkBot, the signed HTTP bot, WeCom app callbacks ...) return aiohttp
  routes from ``routes()``; the gateway mounts them on its one server, so every HTTP and
  WebSocket channel shares one port.
- **Client channels** (DingTalk Stream, the WeCom AI bot long connection, the QQ gateway ...)
  own a connection loop in ``run()``, which the gateway starts in its task group and cancels
  on shutdown. They report ``ready`` and call ``host.channel_ready()`` after each (re)connect
  so the outbox flushes what waited while they were away.

Either way an inbound message goes through ``host.accept()`` **before** the platform is
acknowledged: ``accept`` returns once the message is committed (or recognised as a
duplicate), so the ack can never get ahead of the durable copy. Replies come back through
``send()`` one at a time per chat, in order; a channel that can show partial replies sets
``Capabilities.streaming`` and implements ``stream()``.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import aiohttp
import anyio
import pydantic
from aiohttp import web

from langbot_bridge.gateway.messages import ChatRef, Inbound, Outbound, SendResult, StreamFrame

MiB = 1024 * 1024


class Rejected(Exception):
    """Inbound input refused before anything was stored. ``reason`` is the diagnostics
    counter (``bad_signature``, ``malformed``, ``too_large``, ``overloaded`` ...)."""

    def __init__(self, reason: str, status: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Accepted:
    inbox_id: int | None  # None for a duplicate
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Capabilities:
    streaming: bool = False  # stream() shows partial replies
    max_text_chars: int = 4000  # longer replies are split into several messages, never cut
    max_file_bytes: int = 10 * MiB  # a larger file is replaced by a note saying why
    files: bool = True  # the channel can send files at all


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox message to send now."""

    outbox_id: int
    outbound: Outbound
    attempt: int  # 1 for the first try
    file_url: str | None  # where the platform can download the file (needs [server] public_url)
    read_file: Callable[[], Awaitable[bytes]]


class ChannelHost(Protocol):
    """What the gateway core offers a channel."""

    @property
    def http(self) -> aiohttp.ClientSession: ...

    @property
    def public_url(self) -> str | None: ...

    async def accept(self, inbound: Inbound, files: Sequence[bytes] = ()) -> Accepted:
        """Store the message once (dedup) and schedule its turn; return when committed.
        Raises ``Rejected`` (503) when the channel's backlog is full; the channel answers the
        platform and counts the rejection, as it does for its own."""
        ...

    async def delivery_result(self, channel: str, platform_id: str, error: str | None, retry: bool) -> None:
        """A platform's later verdict on a message ``send`` reported as ``Sent(confirmed=False)``."""
        ...

    def channel_ready(self, channel: str) -> None:
        """The channel can deliver again (reconnected): flush what is waiting."""
        ...

    def count(self, channel: str, event: str) -> None:
        """Add one to a diagnostics counter of the channel (rejections, duplicates, acks ...)."""
        ...

    async def backlog(self, channel: str) -> dict[str, int]:
        """The channel's outbox: ``pending`` (waiting to be sent) and ``dead`` (given up) messages."""
        ...

    def timing(self, channel: str, name: str, ms: float) -> None:
        """Record one timing of the channel (diagnostics ``timings``, as ``<channel>.<name>``)."""
        ...

    async def load_state(self, channel: str, key: str) -> str | None:
        """A value the channel kept across restarts (a sync cursor, a resumable session)."""
        ...

    async def save_state(self, channel: str, key: str, value: str | None) -> None:
        """Keep a value across restarts, committed on return (None forgets it)."""
        ...


class ChannelSettings(pydantic.BaseModel):
    """Settings every channel has; a kind adds its own fields."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    kind: str
    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9-]{1,32}$")
    max_attempts: int | None = pydantic.Field(default=None, ge=1)  # default: [outbox] max_attempts
    max_body_bytes: int = pydantic.Field(default=1 * MiB, ge=1024)
    max_file_bytes: int = pydantic.Field(default=10 * MiB, ge=1)
    max_text_chars: int = pydantic.Field(default=4000, ge=100)


S = TypeVar("S", bound=ChannelSettings)


class Channel(abc.ABC, Generic[S]):
    kind: ClassVar[str]

    def __init__(self, settings: S, host: ChannelHost) -> None:
        self.settings = settings
        self.host = host
        self.name = settings.name

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_text_chars=self.settings.max_text_chars, max_file_bytes=self.settings.max_file_bytes)

    def routes(self) -> list[web.RouteDef]:
        """aiohttp routes this channel serves on the gateway's server."""
        return []

    async def run(self) -> None:
        """The channel's own long-running work (a client channel's connection loop). Runs in the
        gateway's task group until shutdown; returning early is allowed."""
        await anyio.sleep_forever()

    async def shutdown(self) -> None:
        """The server is stopping: close what the channel's routes hold open (WebSockets)."""

    @property
    def ready(self) -> bool:
        """Whether ``send`` can deliver now. Webhook channels always can."""
        return True

    @abc.abstractmethod
    async def send(self, delivery: Delivery) -> SendResult:
        """Deliver one message. Never raises for platform failures: return ``Retry``,
        ``Failed`` or ``Offline`` saying why."""

    async def stream(self, frame: StreamFrame) -> None:
        """Show a partial reply (only called when ``capabilities.streaming``)."""

    def resolve_target(self, target: str) -> ChatRef | None:
        """The chat a proactive-send target names (``None``: this channel cannot parse it)."""
        return None

    def diagnostics(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class ChannelKind:
    """A channel kind: its settings model and how to build one."""

    name: str
    settings: type[ChannelSettings]
    build: Callable[[Any, ChannelHost], Channel[Any]]
