"""Chat channels for the gateway, by ``[[channel]] kind``.

- ``workbot`` — WorkBot's signed callbacks in, ``send-message`` out (60 requests a minute).
- ``bncr`` — the bncr WebSocket bridge: bncr clients connect to the gateway.
- ``http_bot`` — LangBot 4.11's signed HTTP bot shape: any system can come in this way.

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
    },
)

__all__ = ["CHANNELS"]
