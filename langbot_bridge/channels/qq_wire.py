"""The QQ Bot official protocol's wire facts (field-2026-12 §3.3; tencent-connect/botpy
``gateway.py``, ``flags.py``), as models and pure functions: opcodes, intents, the dispatch
events the gateway answers, and the webhook's Ed25519 signatures.

- Gateway frames are ``{op, d, s?, t?, id?}``: Hello (10) -> Identify (2) or Resume (6) ->
  READY / RESUMED dispatches (0) with increasing ``s``; Heartbeat (1, ``d`` = last seq) ->
  Heartbeat ACK (11); Reconnect (7); Invalid Session (9).
- Close codes 4004 (authentication failed: fetch a new token), 9001 and 9005 (the session
  cannot be resumed: forget it and Identify afresh).
- Webhook: the signing key's seed is the bot secret repeated to 32 bytes; an event is signed
  over ``timestamp + body`` (``X-Signature-Ed25519`` hex, ``X-Signature-Timestamp``), op 13
  asks for ``{plain_token, signature}`` over ``event_ts + plain_token``; events are acked op 12.
"""

from __future__ import annotations

from typing import Any

import pydantic
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 0, 1, 2, 6, 7, 9, 10, 11
HTTP_ACK, VALIDATION = 12, 13
AUTH_FAILED = 4004
NOT_RESUMABLE = (9001, 9005)

INTENTS = {
    "GUILDS": 1 << 0,
    "GUILD_MEMBERS": 1 << 1,
    "GUILD_MESSAGES": 1 << 9,
    "GUILD_MESSAGE_REACTIONS": 1 << 10,
    "DIRECT_MESSAGE": 1 << 12,
    "OPEN_FORUM_EVENT": 1 << 18,
    "AUDIO_OR_LIVE_CHANNEL_MEMBER": 1 << 19,
    "PUBLIC_MESSAGES": 1 << 25,
    "INTERACTION": 1 << 26,
    "MESSAGE_AUDIT": 1 << 27,
    "FORUMS": 1 << 28,
    "AUDIO_ACTION": 1 << 29,
    "PUBLIC_GUILD_MESSAGES": 1 << 30,
}
GROUP_MESSAGE = "GROUP_AT_MESSAGE_CREATE"
C2C_MESSAGE = "C2C_MESSAGE_CREATE"
DUPLICATE_SEQ = 40054005  # "消息被去重" (check msgseq): this msg_id + msg_seq was sent already


def intents_mask(names: list[str]) -> int:
    """The Identify bitmask of intent names (unknown names raise KeyError)."""
    mask = 0
    for name in names:
        mask |= INTENTS[name]
    return mask


class Payload(pydantic.BaseModel):
    """One gateway or webhook frame."""

    model_config = pydantic.ConfigDict(extra="allow")

    op: int
    d: Any = None
    s: int | None = None
    t: str | None = None
    id: str | None = None


class Author(pydantic.BaseModel):
    """``author`` of a group or C2C message (openids only: QQ hides real ids)."""

    model_config = pydantic.ConfigDict(extra="allow")

    member_openid: str = ""
    user_openid: str = ""
    id: str = ""


class Attachment(pydantic.BaseModel):
    """One attachment of a message (by URL)."""

    model_config = pydantic.ConfigDict(extra="allow")

    content_type: str = ""
    filename: str = ""
    url: str = ""


class Message(pydantic.BaseModel):
    """``d`` of ``GROUP_AT_MESSAGE_CREATE`` / ``C2C_MESSAGE_CREATE``."""

    model_config = pydantic.ConfigDict(extra="allow")

    id: str = pydantic.Field(min_length=1)
    content: str = ""
    author: Author = Author()
    group_openid: str = ""
    timestamp: str = ""
    attachments: list[Attachment] = pydantic.Field(default_factory=list)


def identify(token: str, intents: int, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """op 2."""
    return {"op": IDENTIFY, "d": {"token": f"QQBot {token}", "intents": intents, "shard": list(shard)}}


def resume(token: str, session_id: str, seq: int) -> dict[str, Any]:
    """op 6 with the last sequence number handled."""
    return {"op": RESUME, "d": {"token": f"QQBot {token}", "session_id": session_id, "seq": seq}}


def heartbeat(seq: int | None) -> dict[str, Any]:
    """op 1 with the last sequence number (null before any)."""
    return {"op": HEARTBEAT, "d": seq}


def signing_key(secret: str) -> Ed25519PrivateKey:
    """The webhook's Ed25519 key: the seed is the secret repeated until 32 bytes."""
    seed = secret.encode("utf-8")
    if not seed:
        raise ValueError("the bot secret is empty")
    while len(seed) < 32:
        seed += seed
    return Ed25519PrivateKey.from_private_bytes(seed[:32])


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    """Hex Ed25519 signature of ``message``."""
    return key.sign(message).hex()


def verify(key: Ed25519PrivateKey, message: bytes, signature_hex: str) -> bool:
    """Whether ``signature_hex`` signs ``message`` with ``key``'s public half."""
    try:
        key.public_key().verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def validation_answer(key: Ed25519PrivateKey, d: Any) -> dict[str, str]:
    """The answer to op 13: ``{plain_token, signature}`` over ``event_ts + plain_token``."""
    if not isinstance(d, dict) or not isinstance(d.get("plain_token"), str) or "event_ts" not in d:
        raise ValueError("op 13 needs d.plain_token and d.event_ts")
    plain, event_ts = d["plain_token"], str(d["event_ts"])
    return {"plain_token": plain, "signature": sign(key, (event_ts + plain).encode("utf-8"))}
