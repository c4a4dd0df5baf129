"""DingTalk Stream mode's wire facts (field-2026-12 §3.1; open-dingtalk/dingtalk-stream-sdk-python,
``stream.py``, ``frames.py``, ``chatbot.py``), as models and pure functions.

- ``POST {openapi}/v1.0/gateway/connections/open`` with ``clientId``, ``clientSecret`` and the
  subscriptions answers ``{endpoint, ticket}``; the WebSocket is ``<endpoint>?ticket=<ticket>``.
- Frames are JSON text ``{specVersion, type: SYSTEM|EVENT|CALLBACK, headers, data}``; ``data`` is
  a JSON **string**. Every frame is acked on the same socket with ``{code, headers: {messageId,
  contentType}, message, data}`` (a string again).
- The chatbot topic is ``/v1.0/im/bot/messages/get``; its ``data`` holds ``msgId``,
  ``conversationType`` ("1" single, "2" group), ``sessionWebhook`` and the sender.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic

BOT_TOPIC = "/v1.0/im/bot/messages/get"
SYSTEM, EVENT, CALLBACK = "SYSTEM", "EVENT", "CALLBACK"
PING, DISCONNECT = "ping", "disconnect"
SDK_VERSION = "0.24.4"  # the SDK release whose behaviour this client follows
USER_AGENT = f"DingTalkStream/1.0 SDK/{SDK_VERSION} Python (langbot_bridge gateway)"


class Frame(pydantic.BaseModel):
    """One frame from the stream; ``data`` stays the string it came as."""

    model_config = pydantic.ConfigDict(extra="allow")

    specVersion: str = ""
    type: str
    headers: dict[str, Any] = pydantic.Field(default_factory=dict)
    data: str = ""

    @property
    def message_id(self) -> str:
        """``headers.messageId``: what the ack must name."""
        return str(self.headers.get("messageId", ""))

    @property
    def topic(self) -> str:
        """``headers.topic``."""
        return str(self.headers.get("topic", ""))


class Text(pydantic.BaseModel):
    """``text`` of a chatbot message."""

    model_config = pydantic.ConfigDict(extra="allow")

    content: str = ""


class ChatbotMessage(pydantic.BaseModel):
    """The ``data`` of a chatbot callback (``chatbot.py``'s ChatbotMessage fields)."""

    model_config = pydantic.ConfigDict(extra="allow", coerce_numbers_to_str=True)

    msgId: str = pydantic.Field(min_length=1)
    msgtype: str = "text"
    text: Text = Text()
    conversationId: str = pydantic.Field(min_length=1)
    conversationType: str = "1"
    conversationTitle: str = ""
    senderId: str = ""
    senderStaffId: str = ""
    senderNick: str = ""
    chatbotUserId: str = ""
    robotCode: str = ""
    isInAtList: bool = False
    sessionWebhook: str = ""
    sessionWebhookExpiredTime: int = 0  # ms since the epoch
    createAt: int = 0

    @property
    def is_group(self) -> bool:
        """A group conversation ("2")."""
        return self.conversationType == "2"


def open_body(client_id: str, client_secret: str, topics: list[str]) -> dict[str, Any]:
    """The body of ``connections/open``: callbacks for ``topics`` (the SYSTEM topics are always
    delivered; the Go SDK names them, as we do)."""
    subscriptions = [{"type": CALLBACK, "topic": topic} for topic in topics]
    subscriptions += [{"type": SYSTEM, "topic": PING}, {"type": SYSTEM, "topic": DISCONNECT}]
    return {
        "clientId": client_id,
        "clientSecret": client_secret,
        "subscriptions": subscriptions,
        "ua": f"dingtalk-sdk-python/v{SDK_VERSION}-union",
        "localIp": "",
    }


def ack(frame: Frame, code: int, message: str, data: Any) -> str:
    """The ack of ``frame``: ``data`` is sent as a JSON string, as the SDK does."""
    body = {
        "code": code,
        "headers": {"messageId": frame.message_id, "contentType": "application/json"},
        "message": message,
        "data": data if isinstance(data, str) else json.dumps(data, ensure_ascii=False),
    }
    return json.dumps(body, ensure_ascii=False)


def text_reply(content: str, at_user: str | None) -> dict[str, Any]:
    """A ``sessionWebhook`` text reply (``chatbot.py`` ``reply_text``), @-ing ``at_user`` if set."""
    body: dict[str, Any] = {"msgtype": "text", "text": {"content": content}}
    if at_user:
        body["at"] = {"atUserIds": [at_user]}
    return body
