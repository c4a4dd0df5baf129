"""Managed processes and the stdio relay, on real sandboxes (Docker with runc and with gVisor,
and nsjail)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from boxruntime.errors import BoxManagedProcessNotFoundError, BoxSessionNotFoundError
from boxruntime.protocol import Peer, StreamConnection
from integration_tests.daemon import ROOT, Daemon, connect, daemon_env, sandboxes_of, start_daemon

pytestmark = [pytest.mark.anyio]

# A line-echo server: every input line comes back as {"echo": line}; "big N" answers with a
# line of N bytes; "tick N" prints N lines after a pause (output while nobody may listen);
# "crash" writes to stderr and exits 3.
ECHO = r"""
import json, sys, time
for raw in sys.stdin:
    line = raw.rstrip("\n")
    if line == "crash":
        print("fatal: asked to crash", file=sys.stderr, flush=True)
        sys.exit(3)
    if line.startswith("big "):
        print("x" * int(line[4:]), flush=True)
    elif line.startswith("tick "):
        time.sleep(0.5)
        for i in range(int(line[5:])):
            print(json.dumps({"tick": i}), flush=True)
    else:
        print(json.dumps({"echo": line}), flush=True)
"""


@pytest.fixture(params=["docker", "gvisor", "nsjail"])
def box(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[Daemon]:
    backend = str(request.param)
    if backend in ("docker", "gvisor"):
        request.getfixturevalue("docker_engine")
    daemon = start_daemon(data_dir, "--backend", backend, env={"BOXRUNTIME_SESSION_TTL_SEC": "2"})
    daemon.extra["backend"] = backend
    try:
        yield daemon
    finally:
        daemon.stop()
        assert sandboxes_of(backend, data_dir) == []


async def start_echo(peer: Peer, session: str = "mp", process_id: str = "echo") -> dict[str, Any]:
    await peer.call("box_create_session", {"session_id": session}, timeout=120)
    await peer.call("box_fs_write", {"session_id": session, "path": "echo.py", "data": ECHO}, timeout=60)
    spec = {"process_id": process_id, "command": "python3", "args": ["-u", "/workspace/echo.py"]}
    return await peer.call("box_start_managed_process", {"session_id": session, "spec": spec}, timeout=60)


def relay_url(daemon: Daemon, session: str = "mp", process_id: str = "echo") -> str:
    return f"{daemon.http}/v1/sessions/{session}/managed-process/{process_id}/ws"


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await ws.receive(timeout=60)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_relay_round_trip_large_lines_and_info(box: Daemon) -> None:
    async with connect(box) as peer, aiohttp.ClientSession() as http:
        info = await start_echo(peer)
        assert (info["status"], info["process_id"], info["attached"]) == ("running", "echo", False)
        async with http.ws_connect(relay_url(box), protocols=("mcp",), max_msg_size=16 << 20) as ws:
            assert ws.protocol == "mcp"
            await ws.send_str('{"jsonrpc": "2.0", "id": 1, "method": "ping"}')
            assert await receive_json(ws) == {"echo": '{"jsonrpc": "2.0", "id": 1, "method": "ping"}'}
            attached = await peer.call("box_get_managed_process", {"session_id": "mp", "process_id": "echo"})
            assert attached["attached"] is True
            await ws.send_str(f"big {1024 * 1024}")  # a 1 MB "tool result" is one message
            big = await ws.receive(timeout=60)
            assert big.data == "x" * (1024 * 1024)
        session = await peer.call("box_get_session", {"session_id": "mp"})
        assert session["managed_processes"]["echo"]["attached"] is False
        status = await peer.call("box_status", {})
        assert status["managed_processes"] == 1


async def test_detach_reattach_replays_output(box: Daemon) -> None:
    async with connect(box) as peer, aiohttp.ClientSession() as http:
        await start_echo(peer)
        async with http.ws_connect(relay_url(box), protocols=("mcp",)) as ws:
            await ws.send_str("tick 5")  # printed after 0.5 s, when this client is gone
        # The process writes 0.5 s after the client left; give it time to finish.
        await anyio.sleep(1.5)
        pending = await peer.call("box_get_managed_process", {"session_id": "mp", "process_id": "echo"})
        assert pending["status"] == "running" and pending["pending_output_bytes"] > 0
        async with http.ws_connect(relay_url(box), protocols=("mcp",)) as ws:
            ticks = [await receive_json(ws) for _ in range(5)]
            assert ticks == [{"tick": i} for i in range(5)]
            await ws.send_str("still here")
            assert await receive_json(ws) == {"echo": "still here"}


async def test_a_new_client_takes_over(box: Daemon) -> None:
    async with connect(box) as peer, aiohttp.ClientSession() as http:
        await start_echo(peer)
        old = await http.ws_connect(relay_url(box), protocols=("mcp",))
        async with http.ws_connect(relay_url(box), protocols=("mcp",)) as new:
            closed = await old.receive(timeout=30)
            assert closed.type == aiohttp.WSMsgType.CLOSE and old.close_code == 4000
            await new.send_str("hello")
            assert await receive_json(new) == {"echo": "hello"}
        await old.close()


async def test_crash_is_reported_and_relay_refused(box: Daemon) -> None:
    async with connect(box) as peer, aiohttp.ClientSession() as http:
        await start_echo(peer)
        async with http.ws_connect(relay_url(box), protocols=("mcp",)) as ws:
            await ws.send_str("crash")
            end = await ws.receive(timeout=60)
            assert end.type == aiohttp.WSMsgType.CLOSE
        info = await peer.call("box_get_managed_process", {"session_id": "mp", "process_id": "echo"})
        assert (info["status"], info["exit_code"]) == ("exited", 3)
        assert "fatal: asked to crash" in info["stderr_preview"]
        async with http.get(relay_url(box)) as refused:
            assert refused.status == 400
            error = (await refused.json())["error"]
            assert error["code"] == "BoxManagedProcessConflictError" and "not running" in error["message"]
        for url, code in (
            (relay_url(box, session="nope"), "BoxSessionNotFoundError"),
            (relay_url(box, process_id="nope"), "BoxManagedProcessNotFoundError"),
        ):
            async with http.get(url) as response:
                assert response.status == 400 and (await response.json())["error"]["code"] == code
        with pytest.raises(BoxManagedProcessNotFoundError):
            await peer.call("box_stop_managed_process", {"session_id": "mp", "process_id": "nope"})
        with pytest.raises(BoxSessionNotFoundError):
            await peer.call("box_start_managed_process", {"session_id": "nope", "spec": {"command": "cat"}})


async def test_processes_survive_exec_timeouts_and_the_reaper(box: Daemon) -> None:
    async with connect(box) as peer, aiohttp.ClientSession() as http:
        await start_echo(peer)
        timed_out = await peer.call("box_exec", {"session_id": "mp", "cmd": "sleep 60", "timeout_sec": 1}, timeout=60)
        assert timed_out["status"] == "timed_out"
        await anyio.sleep(4)  # TTL is 2 s here: an idle session would be reaped by now
        sessions = await peer.call("box_get_sessions", {})
        assert [s["session_id"] for s in sessions["sessions"]] == ["mp"]
        async with http.ws_connect(relay_url(box), protocols=("mcp",)) as ws:
            await ws.send_str("alive")
            assert await receive_json(ws) == {"echo": "alive"}


async def test_replace_and_stop(box: Daemon) -> None:
    async with connect(box) as peer:
        await start_echo(peer)
        stubborn = {"process_id": "echo", "command": "sh", "args": ["-c", "trap '' TERM; while :; do sleep 1; done"]}
        replaced = await peer.call("box_start_managed_process", {"session_id": "mp", "spec": stubborn}, timeout=60)
        assert replaced["command"] == "sh" and replaced["status"] == "running"
        with anyio.fail_after(30):
            stopped = await peer.call(
                "box_stop_managed_process", {"session_id": "mp", "process_id": "echo"}, timeout=30
            )
        assert stopped == {"stopped": "echo"}  # SIGTERM ignored: SIGKILL after the grace period
        with pytest.raises(BoxManagedProcessNotFoundError):
            await peer.call("box_get_managed_process", {"session_id": "mp", "process_id": "echo"})
        gone = await peer.call("box_exec", {"session_id": "mp", "cmd": "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"})
        assert "while :" not in gone["stdout"]


async def test_relay_requires_the_token(docker_engine: Any, data_dir: Path) -> None:
    token = "r" * 40
    daemon = start_daemon(data_dir, "--backend", "nsjail", token=token)
    try:
        async with connect(daemon) as peer, aiohttp.ClientSession() as http:
            await start_echo(peer)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(relay_url(daemon), protocols=("mcp",))
            assert refused.value.status == 401
            headers = {"X-LangBot-Box-Control-Token": token}
            async with http.ws_connect(relay_url(daemon), protocols=("mcp",), headers=headers) as ws:
                await ws.send_str("ok")
                assert await receive_json(ws) == {"echo": "ok"}
    finally:
        daemon.stop()


async def test_stdio_daemon_serves_the_relay_on_loopback_with_its_own_token(data_dir: Path) -> None:
    argv = [sys.executable, "-m", "boxruntime", "serve", "--stdio", "--backend", "nsjail"]
    log = (data_dir.parent / "stdio.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        env=daemon_env(data_dir),
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdin is not None
    peer = Peer(StreamConnection(proc.stdout, proc.stdin), name="stdio-test")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.run)
            relay = await peer.call("box_relay_info", {})
            assert relay["base_url"].startswith("http://127.0.0.1:") and len(relay["token"]) >= 32
            await start_echo(peer)
            url = f"{relay['base_url']}/v1/sessions/mp/managed-process/echo/ws"
            async with aiohttp.ClientSession() as http:
                async with http.get(url) as refused:
                    assert refused.status == 401
                headers = {"Authorization": f"Bearer {relay['token']}"}
                async with http.ws_connect(url, protocols=("mcp",), headers=headers) as ws:
                    await ws.send_str("via stdio")
                    assert await receive_json(ws) == {"echo": "via stdio"}
            tg.cancel_scope.cancel()
    finally:
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        log.close()
    assert sandboxes_of("nsjail", data_dir) == []
