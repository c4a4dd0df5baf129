"""The WeCom AI bot (智能机器人) long connection's wire facts (field-2026-12 §3.2, seed 000;
WecomTeam/aibot-node-sdk ``src/ws.ts``), as pure functions and models.

- Every frame is JSON text ``{cmd, headers: {req_id}, body}``; an ack has no ``cmd``:
  ``{headers: {req_id}, errcode, errmsg}``.
- ``aibot_subscribe {bot_id, secret}`` authenticates (errcode 0); ``ping`` keeps the link.
- ``aibot_msg_callback`` brings a message (``msgid`` is the dedup key), ``aibot_event_callback``
  an event (``enter_chat``, ``disconnected_event`` ...). A reply names the **callback's**
  ``req_id``: ``aibot_respond_msg`` (stream frames), ``aibot_respond_welcome_msg``.
- ``aibot_send_msg`` sends without a callback (``chatid``: the group, or the user of a single chat).
- Media: ``aibot_upload_media_init`` -> ``_chunk`` (512 KB of raw data each, at most 100) ->
  ``_finish`` -> ``media_id``; inbound media are AES-256-CBC encrypted (key = base64 ``aeskey``,
  IV = its first 16 bytes, PKCS#7 padding to 32).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from typing import Any

import pydantic
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SUBSCRIBE = "aibot_subscribe"
PING = "ping"
MSG_CALLBACK = "aibot_msg_callback"
EVENT_CALLBACK = "aibot_event_callback"
RESPOND = "aibot_respond_msg"
RESPOND_WELCOME = "aibot_respond_welcome_msg"
SEND = "aibot_send_msg"
UPLOAD_INIT = "aibot_upload_media_init"
UPLOAD_CHUNK = "aibot_upload_media_chunk"
UPLOAD_FINISH = "aibot_upload_media_finish"
CHUNK_BYTES = 512 * 1024
MAX_CHUNKS = 100
PAD_BLOCK = 32


def req_id(prefix: str) -> str:
    """A request id in the SDK's form: ``<prefix>_<ms>_<8 hex>``."""
    return f"{prefix}_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


def frame(cmd: str, request_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A frame to send."""
    out: dict[str, Any] = {"cmd": cmd, "headers": {"req_id": request_id}}
    if body is not None:
        out["body"] = body
    return out


class Incoming(pydantic.BaseModel):
    """Any frame from WeCom: a callback (with ``cmd``) or an ack (without)."""

    model_config = pydantic.ConfigDict(extra="allow")

    cmd: str = ""
    headers: dict[str, Any] = pydantic.Field(default_factory=dict)
    body: dict[str, Any] = pydantic.Field(default_factory=dict)
    errcode: int | None = None
    errmsg: str = ""

    @property
    def req_id(self) -> str:
        """``headers.req_id``."""
        return str(self.headers.get("req_id", ""))


class Sender(pydantic.BaseModel):
    """``from`` of a callback."""

    model_config = pydantic.ConfigDict(extra="allow")

    userid: str = pydantic.Field(min_length=1)


class Media(pydantic.BaseModel):
    """``image`` / ``file`` of a callback: an encrypted download valid for 5 minutes."""

    model_config = pydantic.ConfigDict(extra="allow")

    url: str = ""
    aeskey: str = ""
    filename: str = ""


class MessageBody(pydantic.BaseModel):
    """The body of ``aibot_msg_callback``."""

    model_config = pydantic.ConfigDict(extra="allow", populate_by_name=True)

    msgid: str = pydantic.Field(min_length=1)
    aibotid: str = ""
    chatid: str = ""
    chattype: str = "single"
    sender: Sender = pydantic.Field(alias="from")
    msgtype: str = "text"
    text: dict[str, Any] = pydantic.Field(default_factory=dict)
    voice: dict[str, Any] = pydantic.Field(default_factory=dict)
    image: Media | None = None
    file: Media | None = None
    mixed: dict[str, Any] = pydantic.Field(default_factory=dict)

    def content(self) -> str:
        """The text the user sent (voice arrives already as text; mixed: its text items)."""
        if self.msgtype == "text":
            return str(self.text.get("content", ""))
        if self.msgtype == "voice":
            return str(self.voice.get("content", ""))
        if self.msgtype == "mixed":
            items = self.mixed.get("msg_item", [])
            texts = [i.get("text", {}).get("content", "") for i in items if isinstance(i, dict)]
            return "\n".join(t for t in texts if t)
        return ""


def decrypt_media(data: bytes, aeskey: str) -> bytes:
    """An inbound file's bytes: AES-256-CBC with the base64 ``aeskey``, IV its first 16 bytes,
    PKCS#7 padding of up to 32. Raises ValueError when the key or the padding is wrong."""
    try:
        key = base64.b64decode(aeskey + "=" * (-len(aeskey) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("aeskey is not base64") from None
    if len(key) != 32 or not data or len(data) % 16:
        raise ValueError("encrypted media has the wrong key or length")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= PAD_BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise ValueError("encrypted media has bad padding")
    return plain[:-pad]


def encrypt_media(data: bytes, key: bytes) -> bytes:
    """``decrypt_media``'s inverse (for tests and peers)."""
    pad = PAD_BLOCK - len(data) % PAD_BLOCK
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return encryptor.update(data + bytes([pad]) * pad) + encryptor.finalize()
