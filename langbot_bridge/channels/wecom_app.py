"""WeCom app messages (企业微信自建应用; seed 001's ``wecom`` adapter notes): a user's message to
the app arrives as an encrypted XML callback, the reply goes through ``message/send``.

In: the decrypted ``<xml>`` has ``FromUserName`` (the user id), ``MsgType``, ``Content``,
``MsgId`` and ``AgentID``; a text (or an image, named in a note) is stored, deduplicated on
``MsgId`` (WeCom retries a callback it got no answer to within 5 s, three times), before the
answer ``success``. Events (``MsgType`` event: entering the app, menu clicks) are counted and
not answered.

Out: ``POST message/send {touser, msgtype: "text", agentid, text: {content}}``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import pydantic

from langbot_bridge.channels.wecom_callback import WeComCallbackChannel, WeComCallbackSettings
from langbot_bridge.gateway.channel import Capabilities, ChannelHost, ChannelKind, Delivery, Rejected
from langbot_bridge.gateway.messages import ChatRef, Inbound, SendResult


class WeComAppSettings(WeComCallbackSettings):
    """``[[channel]] kind = "wecom_app"``: the corp, the app (``agent_id``), secrets by
    environment variable, the API base."""

    kind: Literal["wecom_app"] = "wecom_app"
    agent_id: int = pydantic.Field(ge=0)


class WeComAppChannel(WeComCallbackChannel):
    """A WeCom app as a webhook channel."""

    kind = "wecom_app"
    settings: WeComAppSettings

    def __init__(self, settings: WeComAppSettings, host: ChannelHost) -> None:
        super().__init__(settings, host)

    @property
    def capabilities(self) -> Capabilities:
        """Text only (files are named in the reply), up to ``max_text_chars``."""
        return Capabilities(max_text_chars=self.settings.max_text_chars, files=False)

    async def handle(self, fields: dict[str, str]) -> None:
        """Store a user's message (once per ``MsgId``); count events."""
        kind = fields.get("MsgType", "")
        if kind == "event":
            self.host.count(self.name, f"event_{fields.get('Event') or 'unknown'}")
            return
        user = fields.get("FromUserName", "")
        message_id = fields.get("MsgId", "")
        if not user or not message_id:
            raise Rejected("malformed", 400, "a message callback needs FromUserName and MsgId")
        agent = fields.get("AgentID", "")
        if agent and agent != str(self.settings.agent_id):
            raise Rejected("malformed", 400, f"AgentID {agent} is not this channel's app")
        text = fields.get("Content", "") if kind == "text" else ""
        note = "" if kind == "text" else f"the user sent a {kind or 'message'} message; it is not shown here"
        chat = ChatRef(
            channel=self.name,
            account=str(self.settings.agent_id),
            chat_type="person",
            chat_id=user,
            user_id=user,
        )
        inbound = Inbound(
            chat=chat,
            message_id=message_id,
            text=text,
            kind=kind or "text",
            note=note,
            reply_to=message_id,
            received_at=time.time(),
        )
        await self.host.accept(inbound)

    async def send(self, delivery: Delivery) -> SendResult:
        """``message/send`` to the user, as this app."""
        outbound = delivery.outbound
        body = {
            "touser": outbound.chat.chat_id,
            "msgtype": "text",
            "agentid": self.settings.agent_id,
            "text": {"content": outbound.text},
        }
        return await self.api.send("message/send", body)

    def diagnostics(self) -> dict[str, Any]:
        """The callback path, the app, the API base."""
        return {"path": self.path, "agent_id": self.settings.agent_id, "api_base_url": self.api.base}


KIND = ChannelKind("wecom_app", WeComAppSettings, WeComAppChannel)
