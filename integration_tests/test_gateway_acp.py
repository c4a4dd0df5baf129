"""The ``acp`` agent: a scripted ACP agent built with the official SDK runs as a managed process
in each chat's sandbox (the SDK mounted in, as sandboxes have no pip), driven by the gateway
over the daemon's relay, behind the WeCom AI bot channel (which streams). One ACP session per
chat, its chunks streamed as WeCom stream frames, permission requests answered by the policy,
and the session resumed (``session/load``) after the gateway restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from integration_tests.acp_site import AGENT_MODULE, SITE_MOUNT, build_acp_root
from integration_tests.daemon import Daemon
from integration_tests.gateway_harness import GatewayProcess, shared_daemon
from integration_tests.gateway_peers.wecom_aibot import WeComAiBotServer

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

BOT = "aib-acp-bot"
SECRET = "wecom-aibot-secret-for-acp"


@pytest.fixture(scope="module")
def acp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_acp_root(tmp_path_factory.mktemp("acp-root"))


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, acp_root: Path) -> Iterator[Daemon]:
    with shared_daemon(tmp_path_factory, "--allow-mount-root", str(acp_root)) as daemon:
        yield daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def peer() -> AsyncIterator[WeComAiBotServer]:
    async with WeComAiBotServer(BOT, SECRET) as server:
        yield server


@pytest.fixture
async def gateway(tmp_path: Path, box: Daemon, peer: WeComAiBotServer, acp_root: Path) -> AsyncIterator[GatewayProcess]:
    channel = {"kind": "wecom_aibot", "name": "wc", "bot_id": BOT, "secret_env": "WC_SECRET", "ws_url": peer.ws_url}
    agent = {
        "kind": "acp",
        "command": "python3",
        "args": ["-m", AGENT_MODULE],
        "env": {"PYTHONPATH": SITE_MOUNT},
        "permission": "allow",
    }
    mount = {"host_path": str(acp_root / "site"), "mount_path": SITE_MOUNT, "mode": "ro"}
    gw = GatewayProcess(
        tmp_path / "gw",
        box,
        [channel],
        agent=agent,
        env={"WC_SECRET": SECRET},
        extra={
            "gateway": {"stream_interval_sec": 0},
            "box": {"extra_mounts": [mount], "allowed_mount_roots": [str(acp_root)]},
        },
    )
    await gw.astart()
    try:
        yield gw
    finally:
        gw.stop()


def final(peer: WeComAiBotServer, req_id: str) -> str:
    frames = [f for f in peer.replies_to(req_id) if f["stream"]["finish"]]
    assert len(frames) == 1
    return str(frames[0]["stream"]["content"])


async def ask(peer: WeComAiBotServer, msgid: str, text: str, user: str) -> str:
    req = await peer.message(msgid, text, user=user)
    await peer.wait_until(lambda: any(f["stream"]["finish"] for f in peer.replies_to(req)), timeout=90)
    return req


async def test_an_acp_agent_in_each_chats_sandbox(peer: WeComAiBotServer, gateway: GatewayProcess) -> None:
    await peer.wait_until(lambda: peer.connections == 1)
    first = await ask(peer, "a-1", "hello", "alice")
    text, session, where, host = final(peer, first).split(" | ")
    assert text == "hello" and session.startswith("turn 1 of sess-")
    assert where == "cwd /workspace /workspace"  # session/new with cwd /workspace, the process there too
    partial = [f["stream"]["content"] for f in peer.replies_to(first) if not f["stream"]["finish"]]
    assert partial and all(final(peer, first).startswith(p) for p in partial)  # chunks streamed as they came
    assert peer.violations == 0

    second = await ask(peer, "a-2", "again", "alice")
    assert final(peer, second).split(" | ")[1] == session.replace("turn 1", "turn 2")  # the same ACP session
    asked = await ask(peer, "a-3", "perm: may I write notes.txt?", "alice")
    assert final(peer, asked) == "permission: yes"  # the policy allowed it

    other = await ask(peer, "b-1", "hi", "bob")
    _, bob_session, _, bob_host = final(peer, other).split(" | ")
    assert bob_host != host and bob_session.startswith("turn 1 of ")  # bob's own sandbox and agent

    # A restarted gateway reaches the same agent process and loads the chat's kept session.
    await gateway.wait_for(lambda d: d["store"]["wc"].get("outbox_delivered") == 4)
    gateway.stop()
    await gateway.astart()
    await peer.wait_until(lambda: peer.connections == 2)
    after = await ask(peer, "a-4", "after the restart", "alice")
    text, resumed, _, same_host = final(peer, after).split(" | ")
    assert resumed == session.replace("turn 1", "turn 4") and same_host == host
    diagnostics = await gateway.diagnostics()
    assert diagnostics["agent"]["sessions_loaded"] == 1 and diagnostics["agent"]["prompts"] == 1
