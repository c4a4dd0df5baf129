"""A gateway killed with SIGKILL loses nothing it acknowledged and answers nothing twice: killed
while the agent works (after the platform's ack), it runs the turn again after the restart and
sends one reply; killed after the reply was stored but before the platform took it, it sends
that reply after the restart, without running the turn again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration_tests.daemon import Daemon
from integration_tests.gateway_harness import GatewayProcess, shared_daemon, wait_box_file
from integration_tests.gateway_peers.workbot import WorkBotServer

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ROBOT = "robot_durability"
TOKEN = "workbot-robot-token-durability-0123456789"
SECRET = "workbot-durability-secret"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with shared_daemon(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def peer() -> AsyncIterator[WorkBotServer]:
    async with WorkBotServer(ROBOT, TOKEN, SECRET) as server:
        yield server


@pytest.fixture
def gateway(tmp_path: Path, box: Daemon, peer: WorkBotServer) -> Iterator[GatewayProcess]:
    channel = {
        "kind": "workbot",
        "name": "wb",
        "robot_id": ROBOT,
        "token_env": "WB_TOKEN",
        "secret_env": "WB_SECRET",
        "api_base": peer.url,
    }
    gw = GatewayProcess(
        tmp_path / "gw",
        box,
        [channel],
        env={"WB_TOKEN": TOKEN, "WB_SECRET": SECRET},
        extra={"outbox": {"backoff_initial_sec": 0.05, "backoff_max_sec": 0.2}},
    )
    gw.start()
    peer.callback_url = f"{gw.url}/workbot/wb"
    try:
        yield gw
    finally:
        gw.stop()


def settled(diagnostics: dict[str, Any], replies: int) -> bool:
    """Nothing left to answer or to send, and ``replies`` accepted by WorkBot (``sent``: its
    result callback is not bound in these tests, so none will confirm them further)."""
    counts = diagnostics["store"].get("wb", {})
    done = counts.get("outbox_sent", 0) + counts.get("outbox_delivered", 0)
    return bool(done == replies and not counts.get("outbox_pending") and not counts.get("inbox_pending"))


async def test_killed_after_the_ack_and_before_the_reply(
    box: Daemon, peer: WorkBotServer, gateway: GatewayProcess
) -> None:
    # The first run marks that it started, then waits for a file nobody writes; a second run of
    # the same turn finds the mark and answers.
    command = (
        "/sh if [ -f .ran ]; then echo second; else touch .ran; while [ ! -f go ]; do sleep 0.05; done; echo first; fi"
    )
    payload = peer.payload(spoken=command, receivedName="ivan")
    status, answer, _ = await peer.deliver(payload)
    assert (status, answer["code"]) == (200, 0)  # acked: from here on the message must be answered
    await wait_box_file(box, "gw_wb_person_ivan", "/workspace/.ran")
    gateway.kill()
    assert peer.sent == []
    await gateway.astart()
    (reply,) = await peer.wait_sent(1)
    assert reply["content"] == "second"
    status, answer, _ = await peer.deliver(payload)  # WorkBot sends it again: still one reply
    assert (status, answer["code"]) == (200, 0)
    await gateway.wait_for(lambda d: settled(d, 1))
    assert len(peer.sent) == 1
    assert await gateway.counter("wb", "duplicates") == 1


async def test_killed_after_the_reply_was_stored_and_before_it_was_sent(
    box: Daemon, peer: WorkBotServer, gateway: GatewayProcess
) -> None:
    peer.fail_next.extend([503] * 10_000)  # WorkBot is down: the reply waits in the outbox
    status, answer, _ = await peer.deliver(peer.payload(spoken="/sh echo x >> runs; wc -l < runs", receivedName="jane"))
    assert (status, answer["code"]) == (200, 0)
    await gateway.wait_for(
        lambda d: d["store"]["wb"].get("outbox_pending") == 1 and d["counters"]["wb"].get("send_retries", 0) >= 1
    )
    gateway.kill()
    peer.fail_next.clear()
    await gateway.astart()
    (reply,) = await peer.wait_sent(1)
    assert reply["content"] == "1"  # the command ran once: the stored reply was sent, not recomputed
    await gateway.wait_for(lambda d: settled(d, 1))
    assert len(peer.sent) == 1
