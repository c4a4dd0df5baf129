"""Hostile or careless payloads against a real daemon (issue 16's findings; Docker, gVisor, nsjail):
each gets a fast, typed error and changes nothing else in the session: the exec in flight
finishes, the managed process keeps running with the same pid, the sandbox stays."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from boxruntime.errors import BoxError, BoxValidationError
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect, sandboxes_of, start_daemon

pytestmark = [pytest.mark.anyio]
MIB = 1 << 20
SESSION = "hostile"


@pytest.fixture(params=["docker", "nsjail"])
def box(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[Daemon]:
    backend = str(request.param)
    if backend in ("docker", "gvisor"):
        request.getfixturevalue("docker_engine")
    daemon = start_daemon(data_dir, "--backend", backend)
    daemon.extra["backend"] = backend
    try:
        yield daemon
    finally:
        daemon.stop()
        assert sandboxes_of(backend, data_dir) == []


async def start_cat(peer: Peer) -> dict[str, Any]:
    await peer.call("box_exec", {"session_id": SESSION, "cmd": "echo ready > f.txt"}, timeout=120)
    spec = {"process_id": "cat", "command": "cat"}
    return await peer.call("box_start_managed_process", {"session_id": SESSION, "spec": spec}, timeout=60)


async def unharmed(peer: Peer, cat: dict[str, Any], sandbox: str) -> None:
    """The session is the same sandbox, its managed process the same and running."""
    session = await peer.call("box_get_session", {"session_id": SESSION})
    assert session["backend_session_id"] == sandbox
    process = session["managed_processes"]["cat"]
    assert process["status"] == "running" and process["started_at"] == cat["started_at"]
    done = await peer.call("box_exec", {"session_id": SESSION, "cmd": "cat f.txt"}, timeout=30)
    assert done["stdout"] == "ready"


async def refused_fast(peer: Peer, action: str, data: dict[str, Any], error: type[BoxError]) -> str:
    started = time.monotonic()
    with pytest.raises(error) as caught:
        await peer.call(action, data, timeout=30)
    assert time.monotonic() - started < 2, (action, str(caught.value))
    return str(caught.value)


# gVisor too: its managed processes' stdio are sockets the agent keeps for a spawn (Spawn.STDIO),
# so a spawn too large for a frame must be refused before any socket is opened, and the agent's
# timer and file operations are the same code under another kernel.
ALL_BACKENDS = pytest.mark.parametrize("box", ["docker", "gvisor", "nsjail"], indirect=True)


@ALL_BACKENDS
async def test_hostile_payloads_get_typed_errors_and_hurt_nothing_else(box: Daemon) -> None:
    async with connect(box) as peer:
        cat = await start_cat(peer)
        sandbox = (await peer.call("box_get_session", {"session_id": SESSION}))["backend_session_id"]
        other = asyncio.ensure_future(
            peer.call("box_exec", {"session_id": SESSION, "cmd": "sleep 1; echo other"}, timeout=30)
        )
        await anyio.sleep(0.2)
        exec_ = {"session_id": SESSION, "cmd": "true"}
        # Refused by the request models.
        await refused_fast(peer, "box_exec", {**exec_, "env": {"A": "x" * (2 * MIB)}}, BoxValidationError)
        await refused_fast(peer, "box_exec", {**exec_, "timeout_sec": 30 * 24 * 3600}, BoxValidationError)
        fs = {"session_id": SESSION, "path": "f.txt"}
        await refused_fast(peer, "box_fs_read", {**fs, "offset": 2**63}, BoxValidationError)
        await refused_fast(peer, "box_fs_write", {**fs, "offset": 2**63, "data": "x"}, BoxValidationError)
        await refused_fast(peer, "box_fs_remove", {**fs, "path": "x" * 300}, BoxValidationError)
        await refused_fast(peer, "box_fs_read", {**fs, "path": "a\udc80"}, BoxValidationError)
        await refused_fast(
            peer, "box_create_session", {"session_id": "img", "image": "INVALID::ref"}, BoxValidationError
        )
        # Within the models' bounds, but not within one agent frame once escaped as JSON
        # (\u0001 is six bytes): refused before it is sent, not by a dropped connection.
        escaped = {f"V{i}": "\x01" * 60_000 for i in range(4)}
        message = await refused_fast(peer, "box_exec", {**exec_, "env": escaped}, BoxValidationError)
        assert "too large for the sandbox agent" in message
        big = {"process_id": "big", "command": "cat", "args": ["\x01" * 60_000] * 4}
        message = await refused_fast(
            peer, "box_start_managed_process", {"session_id": SESSION, "spec": big}, BoxValidationError
        )
        assert "too large for the sandbox agent" in message
        # The agent reports what the kernel refuses, at once and typed.
        await refused_fast(peer, "box_fs_read", {**fs, "path": "missing"}, BoxValidationError)
        await refused_fast(peer, "box_fs_read", {**fs, "path": "."}, BoxValidationError)
        assert (await other)["stdout"] == "other"
        await unharmed(peer, cat, sandbox)


@ALL_BACKENDS
async def test_a_long_timeout_does_not_end_the_sandbox(box: Daemon) -> None:
    async with connect(box) as peer:
        cat = await start_cat(peer)
        sandbox = (await peer.call("box_get_session", {"session_id": SESSION}))["backend_session_id"]
        week = {"session_id": SESSION, "cmd": "sleep 0.5; echo done", "timeout_sec": 7 * 24 * 3600}
        items = [item async for item in peer.call_stream("box_exec_stream", week, timeout=30)]
        assert items[-1]["result"]["stdout"] == "done"
        assert (await peer.call("box_exec", week, timeout=30))["stdout"] == "done"
        await unharmed(peer, cat, sandbox)


async def test_an_invalid_image_reference_from_the_engine_is_a_box_error(docker_engine: Any, data_dir: Path) -> None:
    """Below the models: the Docker backend maps what the Engine refuses to Box errors."""
    from boxruntime.backends.docker.backend import DockerBackend
    from boxruntime.config import Settings

    backend = DockerBackend(Settings(data_dir=data_dir), "hostile0test")
    try:
        with pytest.raises(BoxValidationError, match="image"):
            await backend._call(backend._resolve_image, "INVALID::ref")
        with pytest.raises(BoxError) as caught:
            await backend._call(lambda: backend._engine().containers.get("no such container, really"))
        assert "APIError" not in type(caught.value).__name__
    finally:
        await backend.close()


@ALL_BACKENDS
async def test_commands_are_the_oom_killers_choice_before_the_agent(box: Daemon) -> None:
    """Every command (a spare shell's, a fresh spawn's, a managed process's) and what it starts
    get oom_score_adj 1000. Under gVisor the score is kept but no OOM killer reads it: a sandbox
    over its memory ends as a whole, with an error that says so (test_backend_contract)."""
    async with connect(box) as peer:
        first = await peer.call("box_exec", {"session_id": SESSION, "cmd": "cat /proc/self/oom_score_adj"}, timeout=120)
        assert first["stdout"] == "1000"
        # A managed process is a fresh spawn (under gVisor with the daemon's stdio sockets).
        script = "cat /proc/self/oom_score_adj > adj.tmp && mv adj.tmp adj.txt; exec cat"
        spec = {"process_id": "adj", "command": "sh", "args": ["-c", script]}
        await peer.call("box_start_managed_process", {"session_id": SESSION, "spec": spec}, timeout=60)
        read = {"session_id": SESSION, "cmd": "cat adj.txt 2>/dev/null || true"}
        with anyio.fail_after(30):
            while True:  # the process writes it as it starts
                adj = (await peer.call("box_exec", read, timeout=30))["stdout"]
                if adj:
                    break
                await anyio.sleep(0.1)
        assert adj == "1000"


async def test_commands_that_run_out_of_memory_do_not_end_the_sandbox(box: Daemon) -> None:
    """The OOM killer picks the largest task of the sandbox's cgroup: with forty small ones the
    agent (its PID 1) was as likely a victim as any, and the sandbox ended with it."""
    small = {"session_id": "oom", "memory_mb": 96}
    async with connect(box) as peer:
        await peer.call("box_exec", {**small, "cmd": "echo ready > f.txt"}, timeout=120)
        spec = {"process_id": "cat", "command": "cat"}
        cat = await peer.call("box_start_managed_process", {"session_id": "oom", "spec": spec}, timeout=60)
        hogs = 'for i in $(seq 40); do python3 -c "import time; a = bytearray(6 << 20); time.sleep(3)" & done; wait'
        done = await peer.call("box_exec", {**small, "cmd": hogs}, timeout=60)
        assert done["status"] == "completed"
        again = await peer.call("box_exec", {**small, "cmd": "cat f.txt"}, timeout=60)
        assert again["stdout"] == "ready"
        process = (await peer.call("box_get_session", {"session_id": "oom"}))["managed_processes"]["cat"]
        assert process["status"] == "running" and process["started_at"] == cat["started_at"]
        assert "recreating" not in box.log()
