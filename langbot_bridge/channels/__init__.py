"""Chat channels for the gateway, by ``[[channel]] kind``.

- ``workbot`` — WorkBot's signed callbacks in, ``send-message`` out (60 requests a minute).
- ``bncr`` — the bncr WebSocket bridge: bncr clients connect to the gateway.
- ``http_bot`` — LangBot 4.11's signed HTTP bot shape: any system can come in this way.
- ``dingtalk`` — DingTalk Stream mode: a long connection to DingTalk, replies by session webhook.
- ``wecom_aibot`` — the WeCom AI bot long connection: streamed replies per callback ``req_id``.
- ``qq`` — the QQ Bot official gateway (WebSocket) or its webhook (Ed25519-signed).
- ``wecom_app`` — WeCom app messages: encrypted XML callbacks in, ``message/send`` out.
- ``wecom_kf`` — WeChat customer service (微信客服): callbacks, ``kf/sync_msg``, ``kf/send_msg``.

A module here defines ``KIND`` (a ``ChannelKind``); it is imported only when a config names it.
"""

from __future__ import annotations

from langbot_bridge.gateway.channel import ChannelKind
from langbot_bridge.gateway.registry import Registry

CHANNELS: Registry[ChannelKind] = Registry(
    "channel",
    {
        "workbot": "langbot_bridge.channels.workbot",
        "bncr": "langbot_bridge.channels.bncr",
        "http_bot": "langbot_bridge.channels.http_bot",
        "dingtalk": "langbot_bridge.channels.dingtalk",
        "wecom_aibot": "langbot_bridge.channels.wecom_aibot",
        "qq": "langbot_bridge.channels.qq",
        "wecom_app": "langbot_bridge.channels.wecom_app",
        "wecom_kf": "langbot_bridge.channels.wecom_kf",
    },
)

__all__ = ["CHANNELS"]
