"""The bncr bridge's wire facts (seed 003: @xmoxmo/bncr 0.0.3; field-2026-12 §3.4: bridge v2),
as pure functions and models: frames, session keys, targets, task prefixes.

- Frames are JSON text: requests ``{"type":"req","id","method","params"}``, responses
  ``{"type":"res","id","ok":true,"result":{...}}`` (``"ok":false,"error":{"message"}`` on
  failure) and events ``{"type":"event","event","payload"}``.
- A chat is a route ``platform:groupId:userId`` (``groupId`` "0" for a direct chat). Its
  canonical session key is ``agent:main:bncr:direct:<hex of the route's UTF-8>``, lowercase hex.
- Six target forms name a route: ``agent:main:bncr:direct:<hex>``,
  ``agent:main:bncr:group:<hex>``, ``bncr:<hex>``, ``bncr:g-<hex>``,
  ``bncr:<platform>:<groupId>:<userId>`` and ``bncr:g-<platform>:<groupId>:<userId>``.
- A message starting ``#task:foo``, ``/task:foo`` or ``/task foo <text>`` belongs to the
  sub-session ``<session key>:task:foo``.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

BRIDGE_VERSION = 2
PUSH_EVENT = "bncr.push"
DEFAULT_ACCOUNT = "Primary"
SESSION_PREFIX = "agent:main:bncr:"
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_TASK_KEY = r"([A-Za-z0-9_-]{1,32})"
_TASK_TAGGED = re.compile(r"^\s*(?:#task|/task)\s*[:=]\s*" + _TASK_KEY + r"\s*\n?\s*(.*)$", re.DOTALL)
_TASK_SPACED = re.compile(r"^\s*/task\s+" + _TASK_KEY + r"\s+(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Route:
    platform: str
    group_id: str
    user_id: str

    @property
    def scope(self) -> str:
        """``platform:groupId:userId``."""
        return f"{self.platform}:{self.group_id}:{self.user_id}"

    @property
    def is_group(self) -> bool:
        """A group chat (``groupId`` other than "0")."""
        return self.group_id != "0"

    @property
    def session_key(self) -> str:
        """The canonical ``agent:main:bncr:direct:<hex>`` key of this route."""
        return f"{SESSION_PREFIX}direct:{self.scope.encode('utf-8').hex()}"


def route_from_scope(scope: str) -> Route | None:
    """``platform:groupId:userId`` as a Route; None unless all three parts are there."""
    parts = scope.split(":")
    if len(parts) != 3 or not all(part.strip() for part in parts):
        return None
    platform, group_id, user_id = (part.strip() for part in parts)
    return Route(platform, group_id, user_id)


def route_from_hex(text: str) -> Route | None:
    """A route encoded as the hex of its UTF-8 scope; None when it is not one."""
    if not _HEX.fullmatch(text):
        return None
    try:
        scope = binascii.unhexlify(text).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return route_from_scope(scope)


def strip_task(key: str) -> tuple[str, str | None]:
    """``<key>:task:<name>`` -> (key, name)."""
    match = re.fullmatch(r"(.*):task:" + _TASK_KEY, key)
    return (match.group(1), match.group(2).lower()) if match else (key, None)


def parse_target(target: str) -> tuple[Route, str | None] | None:
    """The route (and task) any of the six target forms names, or None."""
    text, task = strip_task(target.strip())
    if text.startswith(SESSION_PREFIX):
        kind, _, encoded = text[len(SESSION_PREFIX) :].partition(":")
        route = route_from_hex(encoded) if kind in ("direct", "group") else None
        return (route, task) if route else None
    if not text.startswith("bncr:"):
        return None
    rest = text[len("bncr:") :]
    if rest.startswith("g-"):
        rest = rest[2:]
    route = route_from_hex(rest) if ":" not in rest else route_from_scope(rest)
    return (route, task) if route else None


def extract_task(text: str) -> tuple[str | None, str]:
    """(task key, the text without its prefix)."""
    for pattern in (_TASK_TAGGED, _TASK_SPACED):
        match = pattern.match(text)
        if match:
            return match.group(1).lower(), match.group(2)
    return None, text


# ── frames ───────────────────────────────────────────────────────────────


class Request(pydantic.BaseModel):
    """A client request frame ``{"type":"req","id","method","params"}``."""

    model_config = pydantic.ConfigDict(extra="allow")

    type: Literal["req"]
    id: str | int
    method: str
    params: dict[str, Any] = pydantic.Field(default_factory=dict)


def response(request_id: str | int, result: dict[str, Any]) -> dict[str, Any]:
    """The success answer to request ``request_id``."""
    return {"type": "res", "id": request_id, "ok": True, "result": result}


def error(request_id: str | int | None, message: str) -> dict[str, Any]:
    """The failure answer to request ``request_id`` (None when the frame had no readable id)."""
    return {"type": "res", "id": request_id, "ok": False, "error": {"message": message}}


def event(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A gateway-to-client event frame (``bncr.push``, ``bncr.file.*``)."""
    return {"type": "event", "event": name, "payload": payload}


class InboundParams(pydantic.BaseModel):
    """``bncr.inbound`` (seed 003 §6.1); ``text``/``mediaBase64`` are 0.0.2's names, still read."""

    model_config = pydantic.ConfigDict(extra="allow", coerce_numbers_to_str=True)

    accountId: str = DEFAULT_ACCOUNT
    platform: str = ""
    groupId: str = "0"
    userId: str = ""
    sessionKey: str = ""
    scope: str = ""
    msgId: str = ""
    type: str = "text"
    msg: str = ""
    text: str = ""
    base64: str = ""
    mediaBase64: str = ""
    path: str = ""
    mimeType: str = ""
    fileName: str = ""


class FileInit(pydantic.BaseModel):
    """``bncr.file.init``: a transfer's name, type, size and chunking, and the whole file's SHA-256."""

    model_config = pydantic.ConfigDict(extra="allow", coerce_numbers_to_str=True)

    transferId: str = pydantic.Field(min_length=1)
    sessionKey: str = ""
    fileName: str = "file.bin"
    mimeType: str = "application/octet-stream"
    fileSize: int = pydantic.Field(ge=1)
    chunkSize: int = pydantic.Field(ge=1)
    totalChunks: int = pydantic.Field(ge=1)
    fileSha256: str = ""


class FileChunk(pydantic.BaseModel):
    """``bncr.file.chunk``: one base64 chunk with its index, offset, size and SHA-256."""

    model_config = pydantic.ConfigDict(extra="allow", coerce_numbers_to_str=True)

    transferId: str = pydantic.Field(min_length=1)
    chunkIndex: int = pydantic.Field(ge=0)
    offset: int = 0
    size: int = 0
    chunkSha256: str = ""
    base64: str = pydantic.Field(min_length=1)


class FileAck(pydantic.BaseModel):
    """``bncr.file.ack``: the client's verdict on one stage (``chunk``, ``complete``) of a
    gateway-to-client transfer; ``complete`` carries the client's ``path``."""

    model_config = pydantic.ConfigDict(extra="allow", coerce_numbers_to_str=True)

    transferId: str = pydantic.Field(min_length=1)
    stage: str = pydantic.Field(min_length=1)
    chunkIndex: int = -1
    ok: bool = True
    path: str = ""
    errorCode: str = ""
    errorMessage: str = ""


class Ack(pydantic.BaseModel):
    """``bncr.ack``: the client's verdict on a push (``fatal``: do not send it again)."""

    model_config = pydantic.ConfigDict(extra="allow", coerce_numbers_to_str=True)

    messageId: str = pydantic.Field(min_length=1)
    ok: bool = True
    fatal: bool = False
    error: str = ""
