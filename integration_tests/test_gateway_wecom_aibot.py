"""The WeCom AI bot channel against a WeCom peer written from the protocol facts
(``gateway_peers/wecom_aibot.py``), with the real daemon (Docker) underneath: a refused
credential retried, streamed replies whose frames wait for the previous ack, the same msgid
answered once (also after a SIGKILL and restart), withheld ping acks ending the socket, the
welcome on enter_chat, files both ways, and ``disconnected_event`` stopping the channel."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration_tests.daemon import Daemon
from integration_tests.gateway_harness import GatewayProcess, shared_daemon
from integration_tests.gateway_peers.wecom_aibot import WeComAiBotServer

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

BOT = "aib-test-bot"
SECRET = "wecom-aibot-secret-for-tests"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with shared_daemon(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def peer() -> AsyncIterator[WeComAiBotServer]:
    async with WeComAiBotServer(BOT, SECRET) as server:
        yield server


def channel(peer: WeComAiBotServer, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "wecom_aibot",
        "name": "wc",
        "bot_id": BOT,
        "secret_env": "WC_SECRET",
        "ws_url": peer.ws_url + "/",
        "ping_interval_sec": 0.3,
        "reconnect_initial_sec": 0.2,
        "welcome": "Hello, I run your commands in a sandbox.",
        **extra,
    }


@pytest.fixture
async def gateway(tmp_path: Path, box: Daemon, peer: WeComAiBotServer) -> AsyncIterator[GatewayProcess]:
    peer.refuse_subscribes = 1  # the first subscribe is refused, as for a wrong secret
    gw = GatewayProcess(
        tmp_path / "gw",
        box,
        [channel(peer)],
        env={"WC_SECRET": SECRET},
        extra={"gateway": {"stream_interval_sec": 0}},
    )
    await gw.astart()
    try:
        yield gw
    finally:
        gw.stop()


async def test_streamed_replies_dedup_heartbeats_restart_and_takeover(
    peer: WeComAiBotServer, gateway: GatewayProcess
) -> None:
    await peer.wait_until(lambda: peer.connections == 2 and len(peer.subscribes) == 2)
    assert peer.refused == 1 and peer.subscribes[-1] == {"bot_id": BOT, "secret": SECRET}
    assert await gateway.counter("wc", "auth_failures") == 1

    # A streamed reply: partial frames, then the closing frame; each waits for the previous ack.
    peer.ack_delay = 0.2
    req = await peer.message("m-1", "/sh echo one; sleep 1; echo two")
    await peer.wait_until(lambda: any(b["stream"]["finish"] for b in peer.replies_to(req)))
    frames = peer.replies_to(req)
    assert [f["msgtype"] for f in frames] == ["stream"] * len(frames)
    assert len({f["stream"]["id"] for f in frames}) == 1  # one stream
    assert frames[0]["stream"] == {"id": frames[0]["stream"]["id"], "finish": False, "content": "one\n"}
    assert frames[-1]["stream"]["finish"] and frames[-1]["stream"]["content"] == "one\ntwo"
    assert peer.violations == 0

    # The same msgid twice: one answer.
    peer.ack_delay = 0.0
    await peer.message("m-2", "/sh echo twice")
    await peer.message("m-2", "/sh echo twice")
    await peer.wait_until(lambda: peer.final_texts().count("twice") == 1)

    # enter_chat: the welcome, on the event's req_id, well within 5 s.
    enter = await peer.event("enter_chat")
    await peer.wait_until(lambda: bool(peer.replies_to(enter)))
    assert peer.replies_to(enter) == [
        {"msgtype": "text", "text": {"content": "Hello, I run your commands in a sandbox."}}
    ]

    # Ping acks withheld: after two unanswered pings the socket is given up and dialled again.
    peer.withhold_ping_acks = True
    await peer.wait_until(lambda: peer.connections == 3, timeout=30)
    peer.withhold_ping_acks = False
    assert await gateway.counter("wc", "heartbeat_timeouts") == 1

    # SIGKILL and restart: the same msgid again is not answered again.
    await gateway.wait_for(lambda d: d["store"]["wc"].get("outbox_delivered") == 2)
    gateway.kill()
    await gateway.astart()
    await peer.wait_until(lambda: peer.connections == 4)
    await peer.message("m-2", "/sh echo twice")
    await peer.message("m-3", "/sh echo after-restart")
    await peer.wait_until(lambda: "after-restart" in peer.final_texts())
    assert peer.final_texts() == ["one\ntwo", "twice", "after-restart"]

    # disconnected_event: another connection took the bot over; the channel stops for good.
    await peer.event("disconnected_event")
    await gateway.wait_for(lambda d: d["channels"]["wc"]["state"] == "stopped")
    diagnostics = await gateway.diagnostics()
    assert "disconnected_event" in diagnostics["channels"]["wc"]["last_error"]
    assert peer.connections == 4 and diagnostics["channels"]["wc"]["ready"] is False
    assert SECRET not in gateway.log() and SECRET not in str(diagnostics)


async def test_files_both_ways(peer: WeComAiBotServer, gateway: GatewayProcess) -> None:
    await peer.wait_until(lambda: peer.connections == 2)
    picture = os.urandom(70_001)
    req = await peer.image("img-1", picture)
    await peer.wait_until(lambda: bool(peer.replies_to(req)))
    (reply,) = peer.replies_to(req)
    assert f"(image/png, {len(picture)} bytes)" in reply["stream"]["content"]  # decrypted, saved in the inbox
    digest = hashlib.sha256(picture).hexdigest()
    req = await peer.message("m-9", "/sh sha256sum inbox/* | cut -c1-64")
    await peer.wait_until(lambda: bool(peer.replies_to(req)))
    assert peer.replies_to(req)[0]["stream"]["content"] == digest

    command = "/sh head -c 1300000 /dev/urandom > outbox/blob.bin; sha256sum outbox/blob.bin | cut -c1-64"
    req = await peer.message("m-10", command)
    await peer.wait_until(lambda: len(peer.replies_to(req)) == 2)
    text, file = peer.replies_to(req)
    ((media_id, data),) = peer.media.items()
    assert file == {"msgtype": "file", "file": {"media_id": media_id}}
    assert hashlib.sha256(data).hexdigest() == text["stream"]["content"] and len(data) == 1_300_000
