"""The gateway's bncr bridge with a bncr client written from seed 003 and field-2026-12 §3.4, and
the real daemon (Docker) underneath: each route gets its own sandbox, a repeated msgId gets one
reply (after a reconnect and a restart too), replies wait for an offline client and are flushed
when it connects, 5 MB files travel both ways in acknowledged chunks, tasks and targets work,
and a client without the token gets nothing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from integration_tests.daemon import Daemon
from integration_tests.gateway_harness import GatewayProcess, box_write, shared_daemon, wait_box_file
from integration_tests.gateway_peers.bncr import BncrClient, BncrError
from langbot_bridge.gateway.config import SCOPES
from langbot_bridge.gateway.messages import ChatRef
from langbot_bridge.templates import resolve_session_id

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

TOKEN = "bncr-client-token-for-tests-0123456789"
ADMIN = "gateway-admin-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with shared_daemon(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gateway(tmp_path: Path, box: Daemon) -> Iterator[GatewayProcess]:
    channel = {"kind": "bncr", "name": "bn", "token_env": "BNCR_TOKEN", "file_ack_timeout_sec": 1.0}
    gw = GatewayProcess(
        tmp_path / "gw",
        box,
        [channel],
        env={"BNCR_TOKEN": TOKEN, "GW_ADMIN": ADMIN},
        extra={"server": {"admin_token_env": "GW_ADMIN"}},
    )
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def ws_url(gateway: GatewayProcess) -> str:
    return gateway.url.replace("http://", "ws://") + "/bncr/bn"


@pytest.fixture
async def client(gateway: GatewayProcess) -> AsyncIterator[BncrClient]:
    async with BncrClient(ws_url(gateway), token=TOKEN) as bncr:
        connected = await bncr.connect()
        assert (connected["bridgeVersion"], connected["pushEvent"], connected["online"]) == (2, "bncr.push", True)
        yield bncr


def session_key(scope: str) -> str:
    return "agent:main:bncr:direct:" + scope.encode().hex()


async def test_each_route_runs_in_its_own_sandbox(client: BncrClient) -> None:
    accepted = await client.inbound(platform="qq", userId="888888", msgId="m1", msg="/sh echo hi > f; hostname")
    assert accepted == {
        "accepted": True,
        "accountId": "Primary",
        "sessionKey": "agent:main:bncr:direct:71713a303a383838383838",  # seed 003's example
        "msgId": "m1",
        "taskKey": None,
    }
    await client.inbound(platform="qq", groupId="123456", userId="999", msgId="m2", msg="/sh ls; hostname")
    first, second = await client.wait_pushes(2)
    by_user = {p["message"]["userId"]: p for p in (first, second)}
    alone, group = by_user["888888"], by_user["999"]
    assert alone["sessionKey"] == session_key("qq:0:888888")
    assert group["sessionKey"] == session_key("qq:123456:999")
    assert alone["messageId"] == alone["idempotencyKey"] and alone["message"]["type"] == "text"
    assert "f" not in group["message"]["msg"].splitlines()
    assert group["message"]["msg"].splitlines()[-1] != alone["message"]["msg"]


async def test_a_repeated_msg_id_is_answered_once(gateway: GatewayProcess, client: BncrClient) -> None:
    message = {"platform": "tg", "userId": "42", "msgId": "dup-1", "msg": "/sh echo once"}
    assert "duplicated" not in await client.inbound(**message)
    assert (await client.inbound(**message))["duplicated"] is True
    await client.wait_pushes(1)
    async with BncrClient(ws_url(gateway), token=TOKEN) as again:  # a reconnect
        await again.connect()
        assert (await again.inbound(**message))["duplicated"] is True
    await client.close()
    gateway.stop()
    await gateway.astart()  # a restart: the dedup is on disk
    async with BncrClient(ws_url(gateway), token=TOKEN) as after:
        await after.connect()
        assert (await after.inbound(**message))["duplicated"] is True
        await after.inbound(platform="tg", userId="42", msgId="dup-2", msg="/sh echo twice")
        (push,) = await after.wait_pushes(1)
        assert push["message"]["msg"] == "twice"
    assert client.pushes[0]["message"]["msg"] == "once" and len(client.pushes) == 1


async def test_replies_wait_for_an_offline_client_and_are_flushed_on_reconnect(
    box: Daemon, gateway: GatewayProcess
) -> None:
    async with BncrClient(ws_url(gateway), token=TOKEN) as bncr:
        await bncr.connect()
        wait = "/sh touch started; while [ ! -f go ]; do sleep 0.05; done; echo back"
        await bncr.inbound(platform="wx", userId="u1", msgId="off-1", msg=wait)
        await bncr.inbound(platform="wx", userId="u1", msgId="off-2", msg="/sh echo after")
    # The client is gone before any reply exists; then the replies are made.
    sid = await session_of(gateway, "wx:0:u1")
    await wait_box_file(box, sid, "/workspace/started")
    await box_write(box, sid, "/workspace/go")
    await gateway.wait_for(lambda d: d["store"]["bn"].get("outbox_pending") == 2)
    async with BncrClient(ws_url(gateway), token=TOKEN) as back:
        connected = await back.connect()
        assert connected["pending"] == 2
        pushes = await back.wait_pushes(2)
        assert [p["message"]["msg"] for p in pushes] == ["back", "after"]  # in order
        await gateway.wait_for(lambda d: not d["store"]["bn"].get("outbox_pending"))
        assert back.repeats == 0 and len(back.pushes) == 2


async def session_of(gateway: GatewayProcess, scope: str) -> str:
    """The sandbox session the gateway gives a direct bncr route (its chat id is the scope)."""
    chat = ChatRef(channel="bn", chat_type="person", chat_id=scope, user_id=scope.split(":")[2])
    return resolve_session_id(SCOPES["chat"], chat.context())


async def test_five_megabyte_files_both_ways_in_acknowledged_chunks(client: BncrClient) -> None:
    data = os.urandom(5 * 1024 * 1024)
    key = session_key("qq:0:filer")
    path = await client.upload(data, "photo.jpg", "image/jpeg", key)
    await client.inbound(platform="qq", userId="filer", msgId="f1", type="image", msg="", path=path)
    (saved,) = await client.wait_pushes(1)
    assert saved["message"]["msg"] == "[file /workspace/inbox/photo.jpg (image/jpeg, 5242880 bytes)]"
    aborted = await client.ok(
        "bncr.file.init",
        {
            "transferId": "t-abort",
            "sessionKey": key,
            "fileName": "x",
            "fileSize": 10,
            "chunkSize": 10,
            "totalChunks": 1,
        },
    )
    assert aborted["status"] == "init"
    assert (await client.ok("bncr.file.abort", {"transferId": "t-abort"}))["status"] == "aborted"
    with pytest.raises(BncrError, match="transfer not found"):
        await client.ok("bncr.file.chunk", {"transferId": "t-abort", "chunkIndex": 0, "base64": "AAAA"})
    client.skip_chunk_acks = {3}  # the first ack of chunk 3 is lost: the gateway sends it again
    command = "/sh sha256sum inbox/photo.jpg | cut -d' ' -f1; cp inbox/photo.jpg outbox/back.jpg"
    await client.inbound(platform="qq", userId="filer", msgId="f2", msg=command)
    pushes = await client.wait_pushes(3)
    assert pushes[1]["message"]["msg"] == hashlib.sha256(data).hexdigest()
    file_push = pushes[2]["message"]
    assert (file_push["type"], file_push["fileName"], file_push["transferMode"]) == ("image", "back.jpg", "chunk")
    assert client.files[file_push["path"]] == data
    assert client.skip_chunk_acks == set()


async def test_tasks_targets_and_diagnostics(gateway: GatewayProcess, client: BncrClient) -> None:
    accepted = await client.inbound(platform="qq", userId="888888", msgId="t1", msg="#task:build\n/sh echo built")
    assert accepted["taskKey"] == "build"
    assert accepted["sessionKey"] == session_key("qq:0:888888") + ":task:build"
    (push,) = await client.wait_pushes(1)
    assert push["sessionKey"].endswith(":task:build") and push["message"]["msg"] == "built"
    await client.inbound(platform="qq", userId="888888", msgId="t2", msg="/sh echo plain")
    await client.wait_pushes(2)
    hexed = b"qq:0:888888".hex()
    targets = [
        f"agent:main:bncr:direct:{hexed}",
        f"agent:main:bncr:group:{hexed}",
        f"bncr:{hexed}",
        f"bncr:g-{hexed}",
        "bncr:qq:0:888888",
        "bncr:g-qq:0:888888",
    ]
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for n, target in enumerate(targets):
            body = {"channel": "bn", "target": target, "text": f"notice {n}"}
            async with http.post(f"{gateway.url}/admin/send", json=body) as response:
                assert response.status == 202, await response.text()
        unknown = {"channel": "bn", "target": "bncr:qq:0:777", "text": "hello?"}
        async with http.post(f"{gateway.url}/admin/send", json=unknown) as response:
            assert response.status == 404
            assert "target not found in known sessions" in (await response.json())["error"]
    pushes = await client.wait_pushes(2 + len(targets))
    assert [p["message"]["msg"] for p in pushes[2:]] == [f"notice {n}" for n in range(len(targets))]
    assert {p["sessionKey"] for p in pushes[2:]} == {session_key("qq:0:888888")}
    activity = await client.ok("bncr.activity", {"accountId": "Primary", "reason": "heartbeat"})
    assert activity["event"] == "activity" and activity["activeConnections"] == 1
    diagnostics = await client.ok("bncr.diagnostics", {"accountId": "Primary"})
    assert diagnostics["diagnostics"]["health"]["connected"] is True
    assert diagnostics["runtime"]["lastSessionKey"] == session_key("qq:0:888888")


async def test_clients_without_the_token_get_nothing(gateway: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(gateway), headers={"Authorization": "Bearer wrong"})
        assert refused.value.status == 401
    async with BncrClient(ws_url(gateway), token=None) as anonymous:
        response = await anonymous.call("bncr.inbound", {"platform": "qq", "userId": "1", "msg": "/sh id"})
        assert response["ok"] is False and "bncr.connect first" in response["error"]["message"]
        with pytest.raises(BncrError, match="unauthorized"):
            await anonymous.connect()
        with pytest.raises(BncrError, match="unauthorized"):
            await anonymous.connect(token="wrong")
    async with BncrClient(ws_url(gateway), token=TOKEN, header_token=False) as in_params:
        await in_params.connect()  # the token in bncr.connect's params works too
        with pytest.raises(BncrError, match="platform/groupId/userId required"):
            await in_params.inbound(userId="1", msg="no platform")
        assert in_params._ws is not None
        await in_params._ws.send_str("{not json")
        garbage = await in_params.call("bncr.nonsense", {})
        assert garbage["ok"] is False and "unknown method" in garbage["error"]["message"]
    counters = (await gateway.diagnostics())["counters"]["bn"]
    assert counters["rejected_bad_token"] == 3 and counters["rejected_malformed"] == 2
    assert "accepted" not in counters
    assert TOKEN not in gateway.log()
