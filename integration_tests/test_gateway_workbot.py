"""The gateway's WorkBot channel against a WorkBot server written from seed 004, with the real
daemon (Docker) underneath: commands run in each chat's own sandbox, redeliveries get one
reply, the 60-a-minute send limit holds under a burst, results are followed up, 5 MB files
travel both ways byte for byte, and bad input is refused without storing anything."""

from __future__ import annotations

import base64
import collections
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from integration_tests.daemon import Daemon
from integration_tests.gateway_harness import GatewayProcess, box_write, shared_daemon, wait_box_file
from integration_tests.gateway_peers.workbot import WorkBotServer, stringify

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ROBOT = "robot_1703123456789_abc123"
TOKEN = "workbot-robot-token-for-tests-0123456789"
SECRET = "workbot-signing-secret-for-tests"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with shared_daemon(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def workbot_channel(peer: WorkBotServer, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "workbot",
        "name": "wb",
        "robot_id": ROBOT,
        "token_env": "WB_TOKEN",
        "secret_env": "WB_SECRET",
        "api_base": peer.url,
        **extra,
    }


async def started(
    tmp_path: Path, box: Daemon, peer: WorkBotServer, *, channel: dict[str, Any] | None = None, **kwargs: Any
) -> GatewayProcess:
    gateway = GatewayProcess(
        tmp_path / "gw",
        box,
        [channel or workbot_channel(peer)],
        env={"WB_TOKEN": TOKEN, "WB_SECRET": SECRET},
        **kwargs,
    )
    await gateway.astart()
    peer.callback_url = f"{gateway.url}/workbot/wb"
    return gateway


@pytest.fixture
async def peer() -> AsyncIterator[WorkBotServer]:
    async with WorkBotServer(ROBOT, TOKEN, SECRET) as server:
        yield server


@pytest.fixture
async def gateway(tmp_path: Path, box: Daemon, peer: WorkBotServer) -> AsyncIterator[GatewayProcess]:
    gw = await started(tmp_path, box, peer)
    try:
        yield gw
    finally:
        gw.stop()


async def say(peer: WorkBotServer, text: str, **fields: Any) -> dict[str, Any]:
    status, answer, took = await peer.deliver(peer.payload(spoken=text, **fields))
    assert (status, answer) == (200, {"code": 0, "message": "success"})
    assert took < 3  # WorkBot's budget for the answer
    return peer.payload(spoken=text, **fields)


async def test_each_chat_runs_in_its_own_sandbox(peer: WorkBotServer, gateway: GatewayProcess) -> None:
    await say(peer, "/sh echo $((6*7)) > mine; hostname; cat mine", receivedName="alice")
    await say(peer, "/sh ls; hostname", groupName="ops-room", roomType=1, atMe=True, receivedName="bob")
    await say(peer, "/sh echo ignored", groupName="ops-room", roomType=1, atMe=False, receivedName="carol")
    sent = await peer.wait_sent(2)
    assert len(sent) == 2 and all(m["type"] == "text" for m in sent)
    to_alice = next(m for m in sent if m["titleList"] == ["alice"])
    to_room = next(m for m in sent if m["titleList"] == ["ops-room"])
    alice_host, answer = to_alice["content"].splitlines()
    assert answer == "42" and "atList" not in to_alice
    assert to_room["atList"] == ["bob"]  # @ the sender in a group
    room_lines = to_room["content"].splitlines()
    assert "mine" not in room_lines  # the group's sandbox is not alice's
    assert room_lines[-1] != alice_host
    diagnostics = await gateway.diagnostics()
    assert diagnostics["counters"]["wb"]["ignored_not_mentioned"] == 1  # not @-mentioned in a group
    assert diagnostics["store"]["wb"]["known_chats"] == 2


async def test_a_redelivered_callback_is_answered_once(
    tmp_path: Path, box: Daemon, peer: WorkBotServer, gateway: GatewayProcess
) -> None:
    payload = peer.payload(spoken="/sh echo once", receivedName="dave")
    for _ in range(3):
        status, answer, _ = await peer.deliver(payload)
        assert (status, answer["code"]) == (200, 0)
    await peer.wait_sent(1)
    gateway.stop()  # and again after a restart: the dedup is on disk
    await gateway.astart()
    status, answer, _ = await peer.deliver(payload)
    assert (status, answer["code"]) == (200, 0)
    await say(peer, "/sh echo after", receivedName="dave")
    await peer.wait_sent(2)
    assert peer.texts_to("dave") == ["once", "after"]
    assert await gateway.counter("wb", "duplicates") == 1  # counters start again with the process
    assert (await gateway.store_counts("wb"))["inbox_done"] == 2


async def test_bad_input_is_refused_and_nothing_is_stored(peer: WorkBotServer, gateway: GatewayProcess) -> None:
    url = peer.callback_url
    body = stringify(peer.payload(spoken="/sh echo sneaky", receivedName="eve"))
    bad_signature = {"Content-Type": "application/json", "X-Signature": "0" * 64}
    assert (await peer.post_raw(url, body, bad_signature))[0] == 401
    assert (await peer.post_raw(url, body, {"Content-Type": "application/json"}))[0] == 401  # unsigned
    not_json = b"{not json"
    assert (await peer.post_raw(url, not_json, peer.signed_headers(not_json)))[0] == 400
    missing = stringify({"robotId": ROBOT, "spoken": "hi"})
    assert (await peer.post_raw(url, missing, peer.signed_headers(missing)))[0] == 400
    other_robot = stringify(peer.payload(spoken="hi", robotId="robot_other"))
    assert (await peer.post_raw(url, other_robot, peer.signed_headers(other_robot)))[0] == 400
    huge = stringify(peer.payload(spoken="x" * (17 * 1024 * 1024)))
    assert (await peer.post_raw(url, huge, peer.signed_headers(huge)))[0] == 413
    diagnostics = await gateway.diagnostics()
    counters = diagnostics["counters"]["wb"]
    assert counters["rejected_bad_signature"] == 2
    assert counters["rejected_malformed"] == 3
    assert counters["rejected_too_large"] == 1
    assert "accepted" not in counters and diagnostics["store"].get("wb", {}).get("known_chats") is None
    assert SECRET not in str(diagnostics) and TOKEN not in str(diagnostics)
    assert SECRET not in gateway.log() and TOKEN not in gateway.log()
    assert peer.sent == []


async def test_a_flood_gets_503_not_a_crash(tmp_path: Path, box: Daemon, peer: WorkBotServer) -> None:
    gateway = await started(tmp_path, box, peer, extra={"gateway": {"max_pending_per_channel": 2}})
    try:
        # The first message's command waits for a file, so nothing is answered meanwhile: with two
        # messages waiting, the channel's backlog is full and the rest are refused.
        wait = "/sh touch started; while [ ! -f go ]; do sleep 0.05; done; echo released"
        texts = [wait] + [f"/sh echo {n}" for n in (1, 2, 3)]
        statuses = []
        for text in texts:
            status, answer, _ = await peer.deliver(peer.payload(spoken=text, receivedName="flood"))
            statuses.append((status, answer["code"]))
        assert statuses == [(200, 0), (200, 0), (503, 503), (503, 503)]
        await wait_box_file(box, "gw_wb_person_flood", "/workspace/started")
        await box_write(box, "gw_wb_person_flood", "/workspace/go")
        await peer.wait_sent(2)
        assert peer.texts_to("flood") == ["released", "1"]
        assert await gateway.counter("wb", "rejected_overloaded") == 2
        status, answer, _ = await peer.deliver(peer.payload(spoken="/sh echo later", receivedName="flood"))
        assert (status, answer["code"]) == (200, 0)  # the backlog drained: accepted again
        await peer.wait_sent(3)
    finally:
        gateway.stop()


async def test_a_burst_of_200_keeps_the_limit_the_order_and_every_message(tmp_path: Path, box: Daemon) -> None:
    # WorkBot allows 60 requests a minute; the peer and the channel use a 1.5 s window instead so
    # 200 replies take seconds, counted exactly the same way.
    async with WorkBotServer(ROBOT, TOKEN, SECRET, limit=60, window=1.5) as peer:
        channel = workbot_channel(peer, rate_limit=60, rate_window_sec=1.5)
        gateway = await started(tmp_path, box, peer, channel=channel)
        try:
            chats = [f"user{c}" for c in range(10)]

            async def chat_burst(name: str) -> None:
                for n in range(20):
                    await say(peer, f"/sh echo {name}-{n}", receivedName=name)

            async with anyio.create_task_group() as tg:
                for name in chats:
                    tg.start_soon(chat_burst, name)
            await peer.wait_sent(200, timeout=120)
            assert peer.status_429 == 0 and peer.max_in_window <= 60
            for name in chats:
                assert peer.texts_to(name) == [f"{name}-{n}" for n in range(20)]
            await anyio.sleep(0.5)  # nothing more may arrive
            assert len(peer.sent) == 200
            assert await gateway.counter("wb", "sent") == 200
        finally:
            gateway.stop()


async def test_429_and_failed_results_are_retried_or_dead_lettered(
    tmp_path: Path, box: Daemon, peer: WorkBotServer
) -> None:
    # Without a Retry-After, a 429 holds sends for one rate window: 1 s here.
    channel = workbot_channel(peer, rate_window_sec=1.0)
    outbox = {"backoff_initial_sec": 0.05, "max_attempts": 3}
    gateway = await started(tmp_path, box, peer, channel=channel, extra={"outbox": outbox})
    peer.result_url = peer.callback_url  # results come to the same callback URL
    try:
        peer.fail_next.extend([429, 503])  # rate limited, then a server error: both retried
        await say(peer, "/sh echo through", receivedName="frank")
        await peer.wait_sent(1)
        assert peer.texts_to("frank") == ["through"]
        peer.results.extend([(201102, [])])  # "send failed" on the phone: WorkBot reports it, we send again
        await say(peer, "/sh echo again", receivedName="frank")
        await peer.wait_sent(3)
        assert peer.texts_to("frank") == ["through", "again", "again"]
        peer.results.extend([(101013, [])])  # no permission: sending again cannot help
        await say(peer, "/sh echo forbidden", receivedName="frank")
        diagnostics = await gateway.wait_for(lambda d: bool(d["dead_letters"]))
        assert "101013" in diagnostics["dead_letters"][0]["error"]
        counts = await gateway.wait_for(lambda d: d["store"]["wb"].get("outbox_delivered") == 2)
        assert counts["counters"]["wb"]["send_retries"] == 2
        assert counts["counters"]["wb"]["results_failed"] == 2
    finally:
        gateway.stop()


async def test_five_megabyte_files_both_ways(peer: WorkBotServer, gateway: GatewayProcess) -> None:
    image = os.urandom(5 * 1024 * 1024)
    digest = hashlib.sha256(image).hexdigest()
    await say(peer, "", receivedName="gina", textType=2, fileBase64=base64.b64encode(image).decode())
    (saved,) = await peer.wait_sent(1)
    path = saved["content"].split()[1]  # "[file /workspace/inbox/image-….png (image/png, 5242880 bytes)]"
    assert path.startswith("/workspace/inbox/image-") and "5242880 bytes" in saved["content"]
    await say(peer, f"/sh sha256sum {path} | cut -d' ' -f1; cp {path} /workspace/outbox/back.png", receivedName="gina")
    sent = await peer.wait_sent(3)
    assert sent[1]["content"] == digest
    file_message = sent[2]
    assert (file_message["type"], file_message["objectName"]) == ("image", "back.png")
    assert peer.files[file_message["_messageId"]] == image  # downloaded from the gateway, byte for byte
    await say(peer, "/sh ls -A /workspace/outbox", receivedName="gina")
    await peer.wait_sent(4)
    assert peer.sent[3]["content"] == "(no output)"  # sent files leave the outbox


async def test_every_text_type_reaches_the_agent(peer: WorkBotServer, gateway: GatewayProcess) -> None:
    await say(peer, "", receivedName="hank", textType=3)  # voice
    await say(peer, "look", receivedName="hank", textType=8)  # link
    await say(peer, "/sh echo quoted", receivedName="hank", textType=15)  # text replying to a message
    await peer.wait_sent(3)
    replies = peer.texts_to("hank")
    # The command agent answers anything that is not /sh with its help; the voice and the link
    # were described to it rather than dropped.
    assert replies[2] == "quoted"
    counts: collections.Counter[str] = collections.Counter(replies[:2])
    assert counts == {"Send /sh <command> to run it in this chat's sandbox.": 2}
