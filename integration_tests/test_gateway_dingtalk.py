"""The DingTalk Stream channel against a DingTalk peer written from the protocol facts
(``gateway_peers/dingtalk.py``), with the real daemon (Docker) underneath: the ticketed stream,
SYSTEM ping and disconnect, acks only after the message is stored, a redelivered messageId
answered once (also after a SIGKILL and restart), replies by session webhook and, once that
has expired, by the robot OpenAPI; bad frames acked 400 and stored nowhere."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration_tests.daemon import Daemon
from integration_tests.gateway_harness import GatewayProcess, shared_daemon
from integration_tests.gateway_peers.dingtalk import BOT_TOPIC, DingTalkServer

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

CLIENT_ID = "dingexampleclientid"
SECRET = "dingtalk-client-secret-for-tests"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with shared_daemon(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def peer() -> AsyncIterator[DingTalkServer]:
    async with DingTalkServer(CLIENT_ID, SECRET) as server:
        yield server


def channel(peer: DingTalkServer, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "dingtalk",
        "name": "dt",
        "client_id": CLIENT_ID,
        "client_secret_env": "DT_SECRET",
        "openapi_base": peer.url,
        **extra,
    }


@pytest.fixture
async def gateway(tmp_path: Path, box: Daemon, peer: DingTalkServer) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path / "gw", box, [channel(peer)], env={"DT_SECRET": SECRET})
    await gw.astart()
    try:
        yield gw
    finally:
        gw.stop()


async def test_messages_in_replies_out_across_reconnects_and_a_restart(
    peer: DingTalkServer, gateway: GatewayProcess
) -> None:
    await peer.wait_until(lambda: peer.connections == 1)
    opened = peer.opens[0]
    assert {"type": "CALLBACK", "topic": BOT_TOPIC} in opened["subscriptions"]
    # SYSTEM ping: the data comes back in a 200 ack.
    ping = await peer.system("ping", {"opaque": "p-1"})
    (ack,) = await peer.wait_ack(ping)
    assert (ack["code"], ack["data"]) == (200, '{"opaque": "p-1"}')

    # A message: acked 200 once stored, answered from the chat's sandbox by session webhook.
    first = await peer.callback(peer.chatbot_data("msg-1", "/sh echo $((6*7)); pwd", user="alice"))
    (ack,) = await peer.wait_ack(first)
    assert ack["code"] == 200 and ack["headers"]["messageId"] == first
    await peer.wait_until(lambda: len(peer.replies) == 1)
    assert peer.replies[0]["text"]["content"] == "42\n/workspace"
    assert "at" not in peer.replies[0]  # a single chat: nobody to @

    # The ack is lost: DingTalk delivers the same messageId again; one reply all the same.
    lost = await peer.callback(peer.chatbot_data("msg-2", "/sh echo second", user="alice"), lose_ack=True)
    await peer.wait_ack(lost)
    await peer.wait_until(lambda: len(peer.replies) == 2)

    # SYSTEM disconnect: acked, then a new connections/open and a new stream.
    await peer.system("disconnect", {"reason": "server upgrade"})
    await peer.wait_until(lambda: peer.connections == 2)
    assert len(peer.opens) == 2
    # A dropped link comes back too; a group message @-s its sender.
    await peer.drop()
    await peer.wait_until(lambda: peer.connections == 3)
    await peer.callback(peer.chatbot_data("msg-3", "/sh echo room", group="ops", user="bob"))
    await peer.wait_until(lambda: len(peer.replies) == 3)
    assert peer.replies[2]["text"]["content"] == "room"
    assert peer.replies[2]["at"] == {"atUserIds": ["bob"]}

    # SIGKILL and restart: the stream comes back, and a redelivery of an answered message is
    # acked again but not answered again (the dedup is on disk). The kill waits for the last
    # reply's "delivered" to be committed: a webhook reply has no idempotency key, so one killed
    # between the send and that commit would be sent again.
    await gateway.wait_for(lambda d: d["store"]["dt"].get("outbox_delivered") == 3)
    gateway.kill()
    await gateway.astart()
    await peer.wait_until(lambda: peer.connections == 4)
    again = await peer.callback(peer.chatbot_data("msg-1", "/sh echo $((6*7)); pwd", user="alice"))
    (ack,) = await peer.wait_ack(again)
    assert ack["code"] == 200
    await peer.callback(peer.chatbot_data("msg-4", "/sh echo after-restart", user="alice"))
    await peer.wait_until(lambda: len(peer.replies) == 4)
    assert peer.reply_texts() == ["42\n/workspace", "second", "room", "after-restart"]
    assert peer.refused_tickets == 0
    diagnostics = await gateway.diagnostics()
    assert diagnostics["counters"]["dt"]["duplicates"] == 1
    assert diagnostics["channels"]["dt"]["state"] == "connected"
    assert SECRET not in gateway.log() and SECRET not in str(diagnostics)


async def test_bad_frames_are_refused_and_expired_webhooks_fall_back_to_the_openapi(
    peer: DingTalkServer, gateway: GatewayProcess
) -> None:
    await peer.wait_until(lambda: peer.connections == 1)
    broken = await peer.callback({"msgtype": "text", "text": {"content": "no msgId, no conversation"}})
    (ack,) = await peer.wait_ack(broken)
    assert ack["code"] == 400 and "msgId" in ack["message"]
    unknown = await peer.system("ping", {})
    await peer.wait_ack(unknown)  # the link is still fine
    message_id, frame = peer.frame("CALLBACK", "/v1.0/some/other/topic", {"x": 1})
    await peer._send(message_id, frame)
    (ack,) = await peer.wait_ack(message_id)
    assert ack["code"] == 404
    diagnostics = await gateway.diagnostics()
    assert diagnostics["counters"]["dt"]["rejected_malformed"] == 1
    assert diagnostics["store"].get("dt", {}).get("known_chats") is None  # nothing was stored

    peer.expired_webhooks = True
    await peer.callback(peer.chatbot_data("msg-5", "/sh echo late", user="carol"))
    await peer.callback(peer.chatbot_data("msg-6", "/sh echo late-room", group="ops", user="dave"))
    await peer.wait_until(lambda: len(peer.openapi_sends) == 2)
    assert peer.replies == []
    by_path = {s["_path"]: s for s in peer.openapi_sends}
    single = by_path["/v1.0/robot/oToMessages/batchSend"]
    assert (single["robotCode"], single["userIds"], single["msgKey"]) == (CLIENT_ID, ["carol"], "sampleText")
    assert single["msgParam"] == '{"content": "late"}'
    group = by_path["/v1.0/robot/groupMessages/send"]
    assert group["openConversationId"] == "cid-ops" and group["msgParam"] == '{"content": "late-room"}'
