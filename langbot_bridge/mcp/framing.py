"""JSON-RPC over the relay, without I/O: one message per WebSocket text message, and request ids
that no other client's replies can match.

Framing: each JSON-RPC message goes out as one compact JSON text (no newline: the daemon adds
the one that ends the stdin line), and each text message that comes in is parsed as exactly
one message (the daemon sends one stdout line per message). A line that is not JSON-RPC
becomes an ``Exception`` item, as the SDK's stdio transport delivers it; blank lines are
skipped.

Id fencing: the daemon keeps a server's output while no client is attached and replays it to
the next one. If that next client is a new session (a restarted bot, a rebuilt connection),
the replay may hold replies to the previous client's requests, whose integer ids a new
session hands out again from 1; such a reply would answer the wrong request. So every request
id goes on the wire prefixed with this client's random tag, replies come back with the tag
removed, and replies (and progress) carrying anyone else's ids are dropped.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp.shared.message import SessionMessage

CANCELLED = "notifications/cancelled"
PROGRESS = "notifications/progress"


def encode(message: SessionMessage) -> str:
    """The text message for one JSON-RPC message (compact, newline-free JSON)."""
    return message.message.model_dump_json(by_alias=True, exclude_unset=True)


def decode(text: str) -> SessionMessage | Exception | None:
    """One received text message: the message, the parse error, or None for a blank line."""
    if not text.strip():
        return None
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(text, by_name=False))
    except ValueError as exc:  # pydantic's ValidationError included
        return exc


class RequestIdFence:
    """Tags our request ids on the way out and checks the tag on the way back in."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or secrets.token_hex(6)
        self.dropped = 0  # replies and progress that belonged to another client

    # Wire form: "<tag>:i<int>" or "<tag>:s<str>", so the original type comes back too.
    def wire_id(self, request_id: types.RequestId) -> str:
        """``request_id`` as sent on the relay: tagged with this client's tag."""
        kind = "i" if isinstance(request_id, int) else "s"
        return f"{self.tag}:{kind}{request_id}"

    def local_id(self, wire: object) -> types.RequestId | None:
        """Our original id for a wire id, or None when the id is not ours."""
        if not isinstance(wire, str):
            return None
        tag, sep, rest = wire.partition(":")
        if not sep or tag != self.tag or not rest:
            return None
        kind, value = rest[0], rest[1:]
        if kind == "s":
            return value
        if kind == "i" and value.lstrip("-").isdigit():
            return int(value)
        return None

    def outgoing(self, message: types.JSONRPCMessage) -> types.JSONRPCMessage:
        """``message`` with our request ids (and the progress tokens that are ids) tagged."""
        if isinstance(message, types.JSONRPCRequest):
            update: dict[str, Any] = {"id": self.wire_id(message.id)}
            meta = (message.params or {}).get("_meta")
            if message.params and isinstance(meta, dict) and meta.get("progressToken") == message.id:
                # The SDK uses the request id as the progress token: tag it the same way.
                update["params"] = {**message.params, "_meta": {**meta, "progressToken": update["id"]}}
            return message.model_copy(update=update)
        if isinstance(message, types.JSONRPCNotification) and message.method == CANCELLED:
            return _with_param(message, "requestId", self.wire_id)
        return message  # notifications, and our replies to the server's own requests

    def incoming(self, message: types.JSONRPCMessage) -> types.JSONRPCMessage | None:
        """The message as our session must see it, or None to drop it."""
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            if message.id is None:  # "could not tell which request": pass it on
                return message
            local = self.local_id(message.id)
            if local is None:
                self.dropped += 1
                return None
            return message.model_copy(update={"id": local})
        if isinstance(message, types.JSONRPCNotification) and message.method == PROGRESS:
            token = (message.params or {}).get("progressToken")
            local = self.local_id(token)
            if local is None:
                self.dropped += 1
                return None
            return _with_param(message, "progressToken", lambda _: local)
        return message


def _with_param(
    message: types.JSONRPCNotification, key: str, change: Callable[[Any], Any]
) -> types.JSONRPCNotification:
    params = message.params or {}
    if key not in params:
        return message
    return message.model_copy(update={"params": {**params, key: change(params[key])}})
