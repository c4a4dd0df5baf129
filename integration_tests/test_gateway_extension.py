"""The gateway's extension points, used the way the next channels and agents will use them: a
long-connection client channel (it owns its connection loop in ``run()``, goes offline and
comes back, streams partial replies) and an agent kind, both registered from outside the
gateway's code, with the gateway running in this process on a daemon it spawns over stdio
(``[box] endpoint = "stdio"``, nsjail)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream

from langbot_bridge.channels import CHANNELS
from langbot_bridge.gateway.agents import (
    AGENTS,
    AgentDeps,
    AgentKind,
    AgentReply,
    AgentRunner,
    AgentSettings,
    TurnInput,
)
from langbot_bridge.gateway.app import Gateway
from langbot_bridge.gateway.channel import (
    Capabilities,
    Channel,
    ChannelHost,
    ChannelKind,
    ChannelSettings,
    Delivery,
)
from langbot_bridge.gateway.config import parse_config
from langbot_bridge.gateway.messages import ChatRef, Inbound, Offline, SendResult, Sent, StreamFrame

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ── a client channel: the "platform" is a pair of in-memory streams ─────


class Platform:
    """What a long-connection platform does: deliver frames while connected, take replies."""

    def __init__(self) -> None:
        self.inbound_send, self.inbound_receive = anyio.create_memory_object_stream[dict[str, Any]](math.inf)
        self.replies: list[dict[str, Any]] = []
        self.frames: list[StreamFrame] = []
        self.acks: list[str] = []
        self.online = anyio.Event()
        self.dropped = anyio.Event()
        self.changed = anyio.Event()

    def note(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait(self, count: int) -> list[dict[str, Any]]:
        with anyio.fail_after(120):
            while len(self.replies) < count:
                await self.changed.wait()
        return self.replies


PLATFORMS: dict[str, Platform] = {}


class LoopbackSettings(ChannelSettings):
    kind: Literal["loopback"] = "loopback"


class LoopbackChannel(Channel[LoopbackSettings]):
    kind = "loopback"

    def __init__(self, settings: LoopbackSettings, host: ChannelHost) -> None:
        super().__init__(settings, host)
        self.platform = PLATFORMS[settings.name]
        self.connected = False

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True)

    @property
    def ready(self) -> bool:
        return self.connected

    async def run(self) -> None:
        # The connection loop a long-connection channel owns: connect, ack each frame after the
        # gateway stored it, reconnect when told to.
        while True:
            await self.platform.online.wait()
            self.connected = True
            self.host.channel_ready(self.name)
            async for frame in self.platform.inbound_receive:
                if frame.get("disconnect"):
                    self.connected = False
                    self.platform.online = anyio.Event()
                    self.platform.dropped.set()
                    break
                chat = ChatRef(channel=self.name, chat_type="person", chat_id=frame["user"], user_id=frame["user"])
                accepted = await self.host.accept(Inbound(chat=chat, message_id=frame["id"], text=frame["text"]))
                self.platform.acks.append(f"{frame['id']}:{'dup' if accepted.duplicate else 'new'}")

    async def send(self, delivery: Delivery) -> SendResult:
        if not self.connected:
            return Offline("not connected")
        self.platform.replies.append({"to": delivery.outbound.chat.chat_id, "text": delivery.outbound.text})
        self.platform.note()
        return Sent()

    async def stream(self, frame: StreamFrame) -> None:
        self.platform.frames.append(frame)


# ── an agent kind: no model; it answers from the sandbox ─────────────────


class ShoutSettings(AgentSettings):
    kind: Literal["shout"] = "shout"


class ShoutRunner(AgentRunner):
    def __init__(self, settings: ShoutSettings, deps: AgentDeps) -> None:
        self.service = deps.service

    async def run(self, turn: TurnInput) -> AgentReply:
        await turn.stream.update("thinking")
        result = await self.service.exec(turn.session_id, "echo $PWD; id -u")
        return AgentReply(f"{turn.prompt.upper()} from {result.stdout.split()[0]}")


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Platform]]:
    CHANNELS.register(ChannelKind("loopback", LoopbackSettings, LoopbackChannel))
    AGENTS.register(AgentKind("shout", ShoutSettings, ShoutRunner))
    PLATFORMS["lb"] = platform = Platform()
    config = parse_config(
        {
            "gateway": {"data_dir": str(tmp_path / "data"), "stream_interval_sec": 0},
            "server": {"port": 0},
            "box": {"endpoint": "stdio", "backend": "nsjail"},
            "agent": {"kind": "shout"},
            "channel": [{"kind": "loopback", "name": "lb"}],
        },
        tmp_path,
    )
    gateway = Gateway(config)
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        try:
            yield gateway, platform
        finally:
            tg.cancel_scope.cancel()


async def say(inbound: MemoryObjectSendStream[dict[str, Any]], message_id: str, user: str, text: str) -> None:
    await inbound.send({"id": message_id, "user": user, "text": text})


async def test_a_client_channel_and_an_agent_plug_in_from_outside(running: tuple[Gateway, Platform]) -> None:
    gateway, platform = running
    platform.online.set()
    await say(platform.inbound_send, "1", "ann", "hello")
    await say(platform.inbound_send, "1", "ann", "hello")  # a replay after a resume: stored once
    (reply,) = await platform.wait(1)
    assert reply == {"to": "ann", "text": "HELLO from /workspace"}
    assert [f.text for f in platform.frames] == ["thinking"]  # streamed while the turn ran
    await platform.inbound_send.send({"disconnect": True})
    with anyio.fail_after(30):
        await platform.dropped.wait()
    assert not gateway.channels["lb"].ready
    # Offline: a message that came in before the drop is answered into the outbox and waits.
    chat = ChatRef(channel="lb", chat_type="person", chat_id="bob", user_id="bob")
    await gateway.accept(Inbound(chat=chat, message_id="2", text="are you there"))
    with anyio.fail_after(60):
        while (await gateway.store.counts()).get("lb", {}).get("outbox_pending") != 1:  # noqa: ASYNC110 - the store
            await anyio.sleep(0.05)
    assert len(platform.replies) == 1
    platform.online.set()  # reconnect: the waiting reply is flushed
    replies = await platform.wait(2)
    assert replies[1] == {"to": "bob", "text": "ARE YOU THERE from /workspace"}
    assert platform.acks == ["1:new", "1:dup"]
    diagnostics = await gateway.diagnostics()
    assert diagnostics["counters"]["lb"]["duplicates"] == 1 and diagnostics["channels"]["lb"]["ready"] is True
