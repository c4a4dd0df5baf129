"""The gateway's signed HTTP bot (LangBot 4.11's HTTP bot shape) with a caller written from
field-2026-12 §3.5 and the real daemon (Docker) underneath: 202 and a signed callback per
reply, in order per session; an idempotency key is accepted once, also after a restart; bad
signatures, malformed and oversized bodies are refused with LangBot's codes and nothing is
stored; callbacks are retried on 5xx only; partial replies stream; 5 MB files both ways."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration_tests.daemon import Daemon
from integration_tests.gateway_harness import GatewayProcess, shared_daemon
from integration_tests.gateway_peers.http_bot import HttpBotCaller, signature

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SECRET = "http-bot-shared-secret-for-tests"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with shared_daemon(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def caller() -> AsyncIterator[HttpBotCaller]:
    async with HttpBotCaller(SECRET) as peer:
        yield peer


def start(tmp_path: Path, box: Daemon, caller: HttpBotCaller, **channel: Any) -> GatewayProcess:
    settings = {
        "kind": "http_bot",
        "name": "api",
        "bot_id": "helper-bot",
        "secret_env": "HB_SECRET",
        "callback_url": caller.callback_url,
        **channel,
    }
    extra = {"outbox": {"backoff_initial_sec": 0.05, "backoff_max_sec": 0.2}, "gateway": {"stream_interval_sec": 0.0}}
    gateway = GatewayProcess(tmp_path / "gw", box, [settings], env={"HB_SECRET": SECRET}, extra=extra)
    gateway.start()
    caller.bot_url = f"{gateway.url}/bots/helper-bot"
    return gateway


@pytest.fixture
def gateway(tmp_path: Path, box: Daemon, caller: HttpBotCaller) -> Iterator[GatewayProcess]:
    gw = start(tmp_path, box, caller)
    try:
        yield gw
    finally:
        gw.stop()


async def test_replies_come_back_signed_and_each_session_has_its_own_sandbox(
    caller: HttpBotCaller, gateway: GatewayProcess
) -> None:
    accepted = await caller.say("s-1", "/sh echo one > note; hostname")
    assert accepted["session_id"] == "s-1" and accepted["aggregating"] is False
    await caller.say("s-2", "/sh ls; hostname", session_type="group", sender={"id": "u7", "name": "Ann"})
    await caller.say("s-1", "/sh cat note")
    callbacks = await caller.wait_callbacks(3)
    one = caller.finals("s-1")
    assert one[0]["reply_to"] == accepted["accepted_message_id"]
    assert all(c["sequence"] == 1 and c["is_final"] and c["stream"] is False for c in callbacks)
    host_1 = caller.texts("s-1")[0]
    assert caller.texts("s-1")[1] == "one"
    listing = caller.texts("s-2")[0].splitlines()
    assert "note" not in listing and listing[-1] != host_1
    assert all(h["X-LB-Signature"].startswith("sha256=") for h in caller.callback_headers)
    assert caller.bad_callbacks == 0


async def test_an_idempotency_key_is_accepted_once(caller: HttpBotCaller, gateway: GatewayProcess) -> None:
    parts = [{"type": "Plain", "text": "/sh echo once"}]
    assert (await caller.post("s-3", parts, idempotency_key="k-1"))[0] == 202
    status, answer = await caller.post("s-3", parts, idempotency_key="k-1")
    assert (status, answer["code"]) == (409, 40901)
    await caller.wait_callbacks(1)
    gateway.stop()
    await gateway.astart()
    status, answer = await caller.post("s-3", parts, idempotency_key="k-1")
    assert (status, answer["code"]) == (409, 40901)  # kept on disk, not in memory
    await caller.say("s-3", "/sh echo next")
    await caller.wait_callbacks(2)
    assert caller.texts("s-3") == ["once", "next"]


async def test_bad_requests_are_refused_with_langbots_codes(caller: HttpBotCaller, gateway: GatewayProcess) -> None:
    raw = json.dumps({"session_id": "s-4", "message": [{"type": "Plain", "text": "/sh echo no"}]}).encode()
    now = int(time.time())
    cases = [
        ({"Content-Type": "application/json"}, "missing_headers"),
        ({"X-LB-Timestamp": "soon", "X-LB-Signature": signature(SECRET, raw, now)}, "bad_timestamp"),
        ({"X-LB-Timestamp": str(now - 400), "X-LB-Signature": signature(SECRET, raw, now - 400)}, "expired"),
        ({"X-LB-Timestamp": str(now), "X-LB-Signature": signature("wrong", raw, now)}, "signature_mismatch"),
    ]
    for headers, reason in cases:
        status, answer = await caller.post_raw(raw, headers)
        assert (status, answer["code"]) == (401, 40101) and reason in answer["msg"]
    for body in (b"{not json", json.dumps({"message": []}).encode(), json.dumps({"session_id": "x"}).encode()):
        status, answer = await caller.post_raw(body, caller.signed(body))
        assert (status, answer["code"]) == (400, 40001)
    huge = json.dumps({"session_id": "s-4", "message": [{"type": "Plain", "text": "x" * (MiB + 10)}]}).encode()
    status, answer = await caller.post_raw(huge, caller.signed(huge))
    assert (status, answer["code"]) == (413, 41301)
    diagnostics = await gateway.diagnostics()
    counters = diagnostics["counters"]["api"]
    assert (counters["rejected_bad_signature"], counters["rejected_malformed"], counters["rejected_too_large"]) == (
        4,
        3,
        1,
    )
    assert "api" not in diagnostics["store"]  # not one row
    assert SECRET not in gateway.log() and SECRET not in json.dumps(diagnostics)


async def test_callbacks_are_retried_on_5xx_only_and_stay_in_order(
    caller: HttpBotCaller, gateway: GatewayProcess
) -> None:
    caller.fail_next.extend([500, 502])
    await caller.say("s-5", "/sh echo first")
    await caller.say("s-5", "/sh echo second")
    await caller.wait_callbacks(2)
    assert caller.texts("s-5") == ["first", "second"]  # the failed first one held the second back
    caller.fail_next.append(400)
    await caller.say("s-5", "/sh echo refused")
    await caller.say("s-5", "/sh echo third")
    await caller.wait_callbacks(3)
    assert caller.texts("s-5") == ["first", "second", "third"]
    diagnostics = await gateway.diagnostics()
    assert diagnostics["counters"]["api"]["send_retries"] == 2
    (dead,) = diagnostics["dead_letters"]
    assert dead["error"] == "callback answered HTTP 400" and dead["attempts"] == 1


async def test_partial_replies_stream_before_the_final_one(tmp_path: Path, box: Daemon, caller: HttpBotCaller) -> None:
    gateway = start(tmp_path, box, caller, stream=True)
    try:
        await caller.say("s-6", "/sh for i in 1 2 3; do echo $i; sleep 0.3; done")
        await caller.wait_callbacks(2)
        final = caller.finals("s-6")
        while not final:
            await caller.wait_callbacks(len(caller.callbacks) + 1)
            final = caller.finals("s-6")
        (last,) = final
        frames = [c for c in caller.callbacks if c["stream"]]
        assert frames and all(not f["is_final"] for f in frames)
        assert [f["sequence"] for f in frames] == list(range(1, len(frames) + 1))
        assert last["sequence"] == len(frames) + 1 and last["is_final"]
        assert caller.callbacks[-1] is last  # nothing streamed after the final reply
        assert last["message"][0]["text"] == "1\n2\n3"
        assert all("1\n2\n3".startswith(f["message"][0]["text"].rstrip("\n")) for f in frames)
    finally:
        gateway.stop()


async def test_five_megabyte_files_both_ways(tmp_path: Path, box: Daemon, caller: HttpBotCaller) -> None:
    gateway = start(tmp_path, box, caller, max_body_bytes=8 * MiB)
    try:
        data = os.urandom(5 * MiB)
        part = {"type": "File", "name": "data.bin", "base64": base64.b64encode(data).decode()}
        status, _ = await caller.post("s-7", [{"type": "Plain", "text": "keep this"}, part])
        assert status == 202
        command = "/sh sha256sum inbox/data.bin | cut -d' ' -f1; cp inbox/data.bin outbox/copy.bin"
        await caller.say("s-7", command)
        callbacks = await caller.wait_callbacks(3)
        assert (
            "[file /workspace/inbox/data.bin (application/octet-stream, 5242880 bytes)]"
            in callbacks[0]["message"][0]["text"]
        )
        text_reply, file_reply = callbacks[1], callbacks[2]
        assert text_reply["message"][0]["text"] == hashlib.sha256(data).hexdigest()
        assert (text_reply["sequence"], text_reply["is_final"]) == (1, False)
        assert (file_reply["sequence"], file_reply["is_final"]) == (2, True)
        (file_part,) = file_reply["message"]
        assert (file_part["type"], file_part["name"], file_part["size"]) == ("File", "copy.bin", len(data))
        assert base64.b64decode(file_part["base64"]) == data
        assert file_part["url"].startswith(gateway.url + "/files/")
    finally:
        gateway.stop()
