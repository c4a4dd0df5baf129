"""The gateway's contract between channels and the core: what comes in, what goes out.

A channel adapter turns its platform's wire format into an ``Inbound`` (and the bytes of any
media) and hands it to the core; the core hands the channel ``Delivery`` objects to send and
gets a ``SendResult`` back. Nothing else crosses that line, so every channel gets the same
durability, ordering and retries.

These models are also what the store keeps (as JSON): changing a field changes the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

from langbot_bridge.templates import ChatContext

ChatType = Literal["person", "group"]
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MAX_FILE_NAME_CHARS = 100


def safe_file_name(name: str, fallback: str = "file.bin") -> str:
    """A file name that is safe as one path component: no separators, no leading dots, short."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    cleaned = _UNSAFE_NAME.sub("_", base).lstrip(".") or fallback
    if len(cleaned) > MAX_FILE_NAME_CHARS:
        _, dot, ext = cleaned.rpartition(".")
        ext = ext if dot and len(ext) <= 10 else ""
        cleaned = cleaned[: MAX_FILE_NAME_CHARS - len(ext) - 1] + ("." + ext if ext else "")
    return cleaned


class ChatRef(pydantic.BaseModel):
    """Where a message came from and where its reply goes.

    ``chat_id`` names the conversation within the channel (a group, or the user of a direct
    chat); with ``channel``, ``account`` and ``chat_type`` it makes the chat key, the unit of
    ordering, history and (by default) sandbox. ``route`` is the channel's own reply
    addressing, kept opaque to the core.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    channel: str
    account: str = ""
    chat_type: ChatType
    chat_id: str = pydantic.Field(min_length=1)
    user_id: str = ""
    user_name: str = ""
    title: str = ""
    thread: str = ""  # a sub-conversation of the chat (bncr's #task:), its own history and order
    route: dict[str, Any] = pydantic.Field(default_factory=dict)

    @property
    def key(self) -> str:
        parts = [self.channel, self.account, self.chat_type, self.chat_id]
        if self.thread:
            parts.append(self.thread)
        return "\x1f".join(parts)

    def context(self) -> ChatContext:
        """The variables session id templates see: ``platform`` is the channel's name, so two
        channels never share a sandbox by accident."""
        return ChatContext(
            platform=self.channel,
            launcher_type=self.chat_type,
            launcher_id=self.chat_id,
            sender_id=self.user_id or None,
            user_id=self.user_id or None,
            group_id=self.chat_id if self.chat_type == "group" else None,
            conversation_id=self.thread or None,
        )


class InboundFile(pydantic.BaseModel):
    """A file that came with a message; its bytes travel next to the model, never inside it."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str
    mime_type: str = "application/octet-stream"
    size: int = pydantic.Field(ge=0)

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return safe_file_name(value)


class Inbound(pydantic.BaseModel):
    """One platform message, as the agent will see it."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    chat: ChatRef
    message_id: str = pydantic.Field(min_length=1)  # the platform's id: the dedup key with channel and account
    text: str = ""
    kind: str = "text"  # text, image, file, voice, video, link ... as the platform names it
    note: str = ""  # what the agent should know about a message it cannot see (a voice note, a link)
    files: list[InboundFile] = pydantic.Field(default_factory=list)
    reply_to: str = ""  # what the reply refers to, when the platform wants it back
    received_at: float = 0.0


class OutFile(pydantic.BaseModel):
    """A file to send; its bytes are in the store, fetched with ``Delivery.read_file``."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str
    mime_type: str
    size: int
    sha256: str
    token: str  # secret part of the download URL, for platforms that fetch files themselves


class Outbound(pydantic.BaseModel):
    """One unit of a reply: a text or a file. A turn's reply is one or more of them, in order;
    the last one has ``final`` set."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    chat: ChatRef
    text: str = ""
    file: OutFile | None = None
    reply_to: str = ""
    sequence: int = 1  # position within the turn's reply, from 1 (after any streamed frames)
    final: bool = True
    idempotency_key: str  # stable across retries and restarts


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """A partial reply for channels that can show one while the agent works (not durable: the
    final reply always goes through the outbox)."""

    chat: ChatRef
    reply_to: str
    turn: str  # the same for every frame of one turn
    sequence: int
    text: str  # the whole text so far, not a delta


# ── results of a send ───────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Sent:
    platform_id: str = ""  # how the platform names the sent message (WorkBot's messageId)
    confirmed: bool = True  # False: a later result callback says whether it arrived


@dataclass(frozen=True, slots=True)
class Retry:
    error: str
    after: float | None = None  # seconds the platform asked us to wait (Retry-After)


@dataclass(frozen=True, slots=True)
class Failed:
    error: str  # permanent: retrying the same request cannot help


@dataclass(frozen=True, slots=True)
class Offline:
    reason: str  # nobody to deliver to now (a client channel with no connection): wait, do not count


SendResult = Sent | Retry | Failed | Offline
