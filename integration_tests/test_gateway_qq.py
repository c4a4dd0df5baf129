"""The QQ Bot channel against a QQ peer written from the protocol facts
(``gateway_peers/qq.py``), with the real daemon (Docker) underneath. Gateway mode: Identify with
PUBLIC_MESSAGES, heartbeats carrying the last seq, op 7 -> Resume with the last seq -> RESUMED
and a replayed duplicate answered once, unanswered heartbeats -> Resume, close 9001 -> a fresh
Identify, a SIGKILL restart resuming the kept session and getting the message QQ took while
the gateway was away. Webhook mode: op 13 validation and Ed25519-signed events, acked op 12."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from integration_tests.daemon import Daemon
from integration_tests.gateway_harness import GatewayProcess, shared_daemon
from integration_tests.gateway_peers.qq import PUBLIC_MESSAGES, QQServer, QQWebhookCaller

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

APP_ID = "102000001"
SECRET = "qqbotsecretfortests0123"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with shared_daemon(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def peer() -> AsyncIterator[QQServer]:
    async with QQServer(APP_ID, SECRET) as server:
        yield server


def channel(peer: QQServer, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "qq",
        "name": "qq",
        "app_id": APP_ID,
        "secret_env": "QQ_SECRET",
        "token_url": f"{peer.url}/app/getAppAccessToken",
        "api_base": peer.url,
        "reconnect_initial_sec": 0.2,
        **extra,
    }


async def started(tmp_path: Path, box: Daemon, peer: QQServer, **extra: Any) -> GatewayProcess:
    gw = GatewayProcess(tmp_path / "gw", box, [channel(peer, **extra)], env={"QQ_SECRET": SECRET})
    await gw.astart()
    return gw


async def test_gateway_resume_replay_heartbeats_and_restart(tmp_path: Path, box: Daemon, peer: QQServer) -> None:
    gateway = await started(tmp_path, box, peer)
    try:
        await peer.wait_until(lambda: len(peer.identifies) == 1)
        assert peer.identifies[0]["intents"] == PUBLIC_MESSAGES and peer.identifies[0]["shard"] == [0, 1]
        await peer.send_message("c2c-1", "/sh echo $((6*7))")
        await peer.send_message("grp-1", "/sh echo room", group="group-openid-9", user="member-2")
        await peer.wait_until(lambda: len(peer.replies) == 2)
        by_path = {r["_path"]: r for r in peer.replies}
        single = by_path["/v2/users/user-openid-1/messages"]
        assert (single["content"], single["msg_id"], single["msg_seq"], single["msg_type"]) == ("42", "c2c-1", 1, 0)
        assert by_path["/v2/groups/group-openid-9/messages"]["content"] == "room"
        await peer.wait_until(lambda: 3 in peer.heartbeats)  # d = the last seq handled

        # op 7: Resume with the session and the last seq; the replayed message is answered once.
        last = peer.seq
        await peer.reconnect()
        await peer.wait_until(lambda: len(peer.resumes) == 1)
        assert peer.resumes[0]["session_id"] == peer.session_id and peer.resumes[0]["seq"] == last
        await peer.send_message("c2c-2", "/sh echo after-resume")
        await peer.wait_until(lambda: len(peer.replies) == 3)
        assert await gateway.counter("qq", "duplicates") == 1  # the replayed message, recognised

        # Heartbeats unanswered: the link is dropped and resumed.
        peer.withhold_heartbeat_acks = True
        await peer.wait_until(lambda: len(peer.resumes) == 2, timeout=30)
        peer.withhold_heartbeat_acks = False
        beats = len(peer.heartbeats)
        await peer.wait_until(lambda: len(peer.heartbeats) >= beats + 2)  # the resumed link is healthy

        # 9001: the session cannot be resumed: a fresh Identify.
        await peer.close_not_resumable()
        await peer.wait_until(lambda: len(peer.identifies) == 2)
        await peer.send_message("c2c-3", "/sh echo fresh-session")
        await peer.wait_until(lambda: len(peer.replies) == 4)

        # SIGKILL; QQ takes a message meanwhile; the restarted gateway resumes the kept session,
        # gets it from the replay and answers it, once.
        await gateway.wait_for(lambda d: d["store"]["qq"].get("outbox_delivered") == 4)
        gateway.kill()
        await peer.wait_until(lambda: peer.ws is None)
        peer.while_away("c2c-4", "/sh echo while-away")
        await gateway.astart()
        await peer.wait_until(lambda: len(peer.resumes) == 3)
        assert peer.resumes[2]["session_id"] == peer.session_id and len(peer.identifies) == 2
        await peer.wait_until(lambda: len(peer.replies) == 5)
        texts = peer.reply_texts()  # two chats run in parallel: their first replies in either order
        assert sorted(texts[:2]) == ["42", "room"] and texts[2:] == ["after-resume", "fresh-session", "while-away"]
        assert peer.refused_duplicates == 0
        diagnostics = await gateway.diagnostics()
        assert diagnostics["channels"]["qq"]["resumable"] is True
        assert SECRET not in gateway.log() and SECRET not in str(diagnostics)
    finally:
        gateway.stop()


async def test_webhook_validation_signatures_and_dedup(tmp_path: Path, box: Daemon, peer: QQServer) -> None:
    gateway = await started(tmp_path, box, peer, mode="webhook")
    caller = QQWebhookCaller(APP_ID, SECRET)
    url = f"{gateway.url}/qq/qq"
    try:
        async with aiohttp.ClientSession() as http:
            plain = secrets.token_hex(8)
            body = json.dumps({"op": 13, "d": {"plain_token": plain, "event_ts": "1725442341"}}).encode()
            async with http.post(url, data=body, headers=caller.headers(body)) as response:
                assert response.status == 200
                assert caller.check_validation(await response.json(), plain, "1725442341")

            event = {
                "op": 0,
                "id": "ev-1",
                "s": 5,
                "t": "C2C_MESSAGE_CREATE",
                "d": peer.message("wh-1", "/sh echo hooked"),
            }
            raw = json.dumps(event).encode()
            for _ in range(2):  # QQ retries a callback: one answer
                async with http.post(url, data=raw, headers=caller.headers(raw)) as response:
                    assert response.status == 200 and await response.json() == {"op": 12, "d": 0}
            forged = caller.headers(raw)
            forged["X-Signature-Ed25519"] = "00" * 64
            async with http.post(url, data=raw, headers=forged) as response:
                assert response.status == 401
            not_json = b"{nope"
            async with http.post(url, data=not_json, headers=caller.headers(not_json)) as response:
                assert response.status == 400
        await peer.wait_until(lambda: len(peer.replies) == 1)
        assert peer.replies[0]["content"] == "hooked" and peer.replies[0]["msg_id"] == "wh-1"
        counters = (await gateway.diagnostics())["counters"]["qq"]
        assert (counters["duplicates"], counters["rejected_bad_signature"], counters["rejected_malformed"]) == (1, 1, 1)
    finally:
        gateway.stop()
