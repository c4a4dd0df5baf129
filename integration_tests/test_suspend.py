"""Idle suspend on real sandboxes: a session idle past ``suspend_idle_sec`` is frozen (Docker
pause, the cgroup v1 freezer for jails) with its running process, and its next action, or a relay
client attaching, thaws it; the process goes on where it stopped (same pid). Under gVisor, pause
stops every task in gVisor's kernel (runsc pause)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import docker
import pytest

from boxruntime.backends.nsjail import freezer
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect, eventually, sandboxes_of, start_daemon

pytestmark = [pytest.mark.anyio]

COUNTER = """
import itertools, time
for i in itertools.count():
    open("/workspace/count", "w").write(str(i))
    time.sleep(0.05)
"""


@pytest.fixture(params=["docker", "gvisor", "nsjail"])
def box(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[Daemon]:
    backend = str(request.param)
    if backend in ("docker", "gvisor"):
        request.getfixturevalue("docker_engine")
    daemon = start_daemon(data_dir, "--backend", backend, env={"BOXRUNTIME_SUSPEND_IDLE_SEC": "1"})
    daemon.extra["backend"] = backend
    try:
        yield daemon
    finally:
        daemon.stop()
        assert sandboxes_of(backend, data_dir) == []


def frozen_by_the_backend(box: Daemon, sandbox_id: str) -> bool:
    if box.extra["backend"] in ("docker", "gvisor"):
        client = docker.from_env()
        try:
            return str(client.containers.get(sandbox_id).status) == "paused"
        finally:
            client.close()
    return freezer.frozen(sandbox_id)


async def session(peer: Peer) -> dict[str, Any]:
    found: dict[str, Any] = await peer.call("box_get_session", {"session_id": "idle"})
    return found


def count(data_dir: Path) -> int:
    found = list(data_dir.glob("workspaces/*/files/count"))
    text = found[0].read_text() if found else ""
    return int(text) if text.isdigit() else -1


async def test_an_idle_session_is_frozen_and_thawed_by_its_next_action(box: Daemon, data_dir: Path) -> None:
    async with connect(box) as peer:
        await peer.call("box_create_session", {"session_id": "idle"}, timeout=120)
        await peer.call("box_fs_write", {"session_id": "idle", "path": "counter.py", "data": COUNTER}, timeout=120)
        spec = {"process_id": "counter", "command": "python3", "args": ["/workspace/counter.py"]}
        started = await peer.call("box_start_managed_process", {"session_id": "idle", "spec": spec}, timeout=60)
        await eventually(lambda: count(data_dir) >= 0)

        frozen: dict[str, Any] = {}

        async def is_frozen() -> bool:
            frozen.update(await session(peer))
            return bool(frozen["suspended"])

        await _until(is_frozen)
        sandbox_id = frozen["backend_session_id"]
        assert frozen_by_the_backend(box, sandbox_id)

        # The next action thaws it, transparently; the process runs on where it stopped.
        done = await peer.call("box_exec", {"session_id": "idle", "cmd": "cat /workspace/count"}, timeout=60)
        assert done["exit_code"] == 0 and done["stdout"].isdigit()
        after = await session(peer)
        assert after["suspended"] is False and not frozen_by_the_backend(box, sandbox_id)
        process = after["managed_processes"]["counter"]
        assert process["status"] == "running" and process["pid"] == started["pid"]
        seen = int(done["stdout"])
        await eventually(lambda: count(data_dir) > seen)

        # Frozen again when idle; a relay client attaching thaws it too.
        await _until(is_frozen)
        url = f"{box.http}/v1/sessions/idle/managed-process/counter/ws"
        async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("mcp",)):
            attached = await session(peer)
            assert attached["suspended"] is False and not frozen_by_the_backend(box, sandbox_id)
            assert attached["managed_processes"]["counter"]["attached"] is True


async def _until(check: Any, timeout: float = 30.0) -> None:
    """Poll the daemon (a freeze happens on its own clock, with nothing to await)."""
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - nothing to await for a freeze
            await anyio.sleep(0.1)
