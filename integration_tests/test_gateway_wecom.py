"""WeCom app messages (``wecom_app``) and WeChat customer service (``wecom_kf``) against a WeCom
peer written from the published callback scheme and API (``gateway_peers/wecom.py``), with the
real daemon (Docker) underneath: URL verification, encrypted callbacks checked and decrypted,
WeCom's callback retries answered once (also after a SIGKILL and restart), an expired token
renewed, a frequency limit retried, ``kf/sync_msg`` followed by its cursor (kept across a
restart, messages taken while the gateway was down fetched at start), and the 95001 send
limit a dead letter with its reason."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration_tests.daemon import Daemon
from integration_tests.gateway_harness import GatewayProcess, shared_daemon
from integration_tests.gateway_peers.wecom import WeComServer

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

CORP = "ww0123456789abcdef"
APP_SECRET = "wecom-app-secret-for-tests"
KF_SECRET = "wecom-kf-secret-for-tests"
TOKEN = "callbacktoken123"
AES_KEY = base64.b64encode(os.urandom(32)).decode().rstrip("=")  # 43 characters
AGENT = 1000002
KF = "wkAbCdEf0123"
ENV = {"WECOM_SECRET": APP_SECRET, "KF_SECRET": KF_SECRET, "CB_TOKEN": TOKEN, "CB_AES": AES_KEY}


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with shared_daemon(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def peer() -> AsyncIterator[WeComServer]:
    async with WeComServer(CORP, {APP_SECRET: "app", KF_SECRET: "kf"}, TOKEN, AES_KEY) as server:
        yield server


def common(peer: WeComServer) -> dict[str, Any]:
    return {
        "corpid": CORP,
        "token_env": "CB_TOKEN",
        "aes_key_env": "CB_AES",
        "api_base_url": peer.api_base,
    }


@pytest.fixture
async def gateway(tmp_path: Path, box: Daemon, peer: WeComServer) -> AsyncIterator[GatewayProcess]:
    channels = [
        {"kind": "wecom_app", "name": "app", "agent_id": AGENT, "secret_env": "WECOM_SECRET", **common(peer)},
        {
            "kind": "wecom_kf",
            "name": "kf",
            "secret_env": "KF_SECRET",
            "open_kfids": [KF],
            "sync_retry_sec": 0.2,
            **common(peer),
        },
    ]
    gw = GatewayProcess(
        tmp_path / "gw", box, channels, env=ENV, extra={"outbox": {"backoff_initial_sec": 0.1, "jitter": 0}}
    )
    await gw.astart()
    try:
        yield gw
    finally:
        gw.stop()


async def test_app_messages(peer: WeComServer, gateway: GatewayProcess) -> None:
    url = f"{gateway.url}/wecom/app"
    status, answer, plain = await peer.verify_url(url)
    assert (status, answer) == (200, plain)

    message = peer.app_message("lisi", "/sh echo $((6*7)); pwd", AGENT)
    for _ in range(3):  # WeCom retries a callback it thinks went unanswered
        assert await peer.callback(url, message, str(AGENT)) == (200, "success")
    await peer.wait_until(lambda: len(peer.sent) == 1)
    assert peer.sent[0] == {
        "touser": "lisi",
        "msgtype": "text",
        "agentid": AGENT,
        "text": {"content": "42\n/workspace"},
        "_api": "message/send",
    }

    # An expired token is renewed once; a frequency limit is retried.
    peer.expire_tokens()
    peer.inject.append(45009)
    await peer.callback(url, peer.app_message("lisi", "/sh echo retried", AGENT), str(AGENT))
    await peer.wait_until(lambda: len(peer.sent) == 2)
    assert peer.texts("message/send")[-1] == "retried" and peer.token_fetches >= 2

    # Bad input: a wrong signature, a body that is not ours to decrypt, no signature at all.
    body, query = peer.envelope(peer.app_message("eve", "/sh echo sneaky", AGENT), str(AGENT))
    assert (await peer.post(url, body, {**query, "msg_signature": "0" * 40}))[0] == 401
    assert (await peer.post(url, b"<xml><Encrypt>bm90IGl0</Encrypt></xml>", query))[0] == 401
    assert (await peer.post(url, body, {}))[0] == 401
    assert (await peer.post(url, b"not xml", query))[0] == 400
    counters = (await gateway.diagnostics())["counters"]["app"]
    assert counters["duplicates"] == 2 and counters["rejected_bad_signature"] == 3
    assert counters["rejected_malformed"] == 1

    # SIGKILL and restart: the first message comes again and is not answered again.
    await gateway.wait_for(lambda d: d["store"]["app"].get("outbox_delivered") == 2)
    gateway.kill()
    await gateway.astart()
    assert await peer.callback(url, message, str(AGENT)) == (200, "success")
    await peer.callback(url, peer.app_message("lisi", "/sh echo after-restart", AGENT), str(AGENT))
    await peer.wait_until(lambda: len(peer.sent) == 3)
    assert peer.texts("message/send") == ["42\n/workspace", "retried", "after-restart"]
    log = gateway.log()
    assert APP_SECRET not in log and AES_KEY not in log and TOKEN not in log


async def test_customer_service_sync_cursor_and_send_limit(peer: WeComServer, gateway: GatewayProcess) -> None:
    url = f"{gateway.url}/wecom/kf"
    await peer.wait_until(lambda: len(peer.sync_calls) >= 1)  # the sync at start
    peer.customer_says(KF, "wm-customer-1", "/sh echo hello customer")
    peer.customer_says(KF, "wm-customer-1", "a servicer's own message", origin=5)
    assert await peer.callback(url, peer.kf_event(KF)) == (200, "success")
    await peer.wait_until(lambda: len(peer.sent) == 1)
    assert peer.sent[0] == {
        "touser": "wm-customer-1",
        "open_kfid": KF,
        "msgtype": "text",
        "text": {"content": "hello customer"},
        "_api": "kf/send_msg",
    }
    last = peer.sync_calls[-1]
    assert last["open_kfid"] == KF and last["token"].startswith("sync-") and last["limit"] == 1000

    # 95001: the customer's 48-hour allowance is used up; a dead letter saying so.
    peer.inject.append(95001)
    peer.customer_says(KF, "wm-customer-2", "/sh echo too many")
    await peer.callback(url, peer.kf_event(KF))
    dead = await gateway.wait_for(lambda d: d["store"].get("kf", {}).get("outbox_dead") == 1)
    assert "errcode 95001" in dead["dead_letters"][0]["error"]

    # Down for a while: the messages that came meanwhile are fetched from the kept cursor at
    # start and answered; nothing already answered is fetched (or answered) again.
    await gateway.wait_for(lambda d: d["store"]["kf"].get("outbox_delivered") == 1)
    gateway.kill()
    calls = len(peer.sync_calls)
    peer.customer_says(KF, "wm-customer-1", "/sh echo while-down")
    await gateway.astart()
    await peer.wait_until(lambda: len(peer.sent) == 2)
    assert peer.sync_calls[calls]["cursor"] == "c3"  # where the last run left off
    assert peer.texts("kf/send_msg") == ["hello customer", "while-down"]
    assert (await gateway.store_counts("kf"))["inbox_done"] == 3
