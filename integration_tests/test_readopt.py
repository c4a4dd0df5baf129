"""Sessions that outlive their daemon: a successor on the same data dir takes them over after a
crash (SIGKILL) or a deliberate handover (SIGUSR2), with their files, their managed processes
(the same pids) and what those wrote meanwhile; a live daemon's sandboxes are never touched.
On Docker and nsjail."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from boxruntime.errors import ConnectionClosedError
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect, eventually, sandboxes_of, start_daemon

pytestmark = [pytest.mark.anyio]

# A line server as an MCP server is: each input line is answered ({"echo": line}); "later S T"
# answers {"later": T} S seconds afterwards, from another thread, and then leaves a marker file
# in the workspace (output the process writes while its daemon may be gone).
SERVER = r"""
import json, sys, threading, time
def later(delay, text):
    time.sleep(delay)
    print(json.dumps({"later": text}), flush=True)
    open("/workspace/later-" + text, "w").close()
for raw in sys.stdin:
    line = raw.rstrip("\n")
    if line.startswith("later "):
        _, delay, text = line.split(" ", 2)
        threading.Thread(target=later, args=(float(delay), text)).start()
    else:
        print(json.dumps({"echo": line}), flush=True)
"""
SESSION = "adopted"


@pytest.fixture(params=["docker", "nsjail"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return str(request.param)


@pytest.fixture
def daemons(backend: str, data_dir: Path) -> Iterator[list[Daemon]]:
    """Every daemon a test starts on ``data_dir``; on teardown each is stopped, and no sandbox
    may be left."""
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop()
        assert sandboxes_of(backend, data_dir) == []


def launch(daemons: list[Daemon], backend: str, data_dir: Path, **env: str) -> Daemon:
    daemon = start_daemon(data_dir, "--backend", backend, env=env)
    daemons.append(daemon)
    return daemon


async def start_server(peer: Peer) -> dict[str, Any]:
    await peer.call("box_create_session", {"session_id": SESSION, "persistent": True}, timeout=120)
    await peer.call("box_fs_write", {"session_id": SESSION, "path": "server.py", "data": SERVER}, timeout=60)
    await peer.call(
        "box_exec", {"session_id": SESSION, "persistent": True, "cmd": "echo kept > /workspace/note"}, timeout=60
    )
    spec = {"process_id": "mcp", "command": "python3", "args": ["-u", "/workspace/server.py"]}
    return await peer.call("box_start_managed_process", {"session_id": SESSION, "spec": spec}, timeout=60)


def relay_url(daemon: Daemon) -> str:
    return f"{daemon.http}/v1/sessions/{SESSION}/managed-process/mcp/ws"


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await ws.receive(timeout=60)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


def workspace_file(data_dir: Path, name: str) -> Path | None:
    found = list(data_dir.glob(f"workspaces/*/files/{name}"))
    return found[0] if found else None


async def check_taken_over(successor: Daemon, before: dict[str, Any], data_dir: Path, replayed: str) -> None:
    """The session, its file and its server (same pid) are there; the relay re-attaches and the
    output written while nobody read comes first."""
    async with connect(successor) as peer:
        session = await peer.call("box_get_session", {"session_id": SESSION})
        assert session["persistent"] is True and session["created_at"] == before["created_at"]
        process = session["managed_processes"]["mcp"]
        assert process["status"] == "running" and process["pid"] == before["pid"]
        note = await peer.call(
            "box_exec", {"session_id": SESSION, "persistent": True, "cmd": "cat /workspace/note"}, timeout=60
        )
        assert note["stdout"] == "kept"
        # The exec that was in flight when its daemon went was ended with it.
        procs = await peer.call(
            "box_exec",
            {"session_id": SESSION, "persistent": True, "cmd": "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"},
            timeout=60,
        )
        assert "sleep 321" not in procs["stdout"]
    async with aiohttp.ClientSession() as http, http.ws_connect(relay_url(successor), protocols=("mcp",)) as ws:
        assert await receive_json(ws) == {"later": replayed}
        await ws.send_str("after")
        assert await receive_json(ws) == {"echo": "after"}


async def test_a_successor_takes_over_after_a_crash(backend: str, data_dir: Path, daemons: list[Daemon]) -> None:
    first = launch(daemons, backend, data_dir)
    async with connect(first) as peer, aiohttp.ClientSession() as http:
        started = await start_server(peer)
        session = await peer.call("box_get_session", {"session_id": SESSION})
        before = {"created_at": session["created_at"], "pid": started["pid"]}
        assert isinstance(before["pid"], int)
        async with http.ws_connect(relay_url(first), protocols=("mcp",)) as ws:
            await ws.send_str("hello")
            assert await receive_json(ws) == {"echo": "hello"}
            await ws.send_str("later 1.5 while-away")
            async with anyio.create_task_group() as tg:
                outcome: dict[str, BaseException] = {}

                async def exec_in_flight() -> None:
                    try:
                        await peer.call(
                            "box_exec",
                            {
                                "session_id": SESSION,
                                "persistent": True,
                                "cmd": "touch /workspace/exec-started; sleep 321",
                            },
                            timeout=120,
                        )
                    except Exception as exc:
                        outcome["error"] = exc

                tg.start_soon(exec_in_flight)
                await eventually(lambda: workspace_file(data_dir, "exec-started") is not None)
                first.stop(signal.SIGKILL)
                # The client that was mid-exec gets a clear error at once, not a hang.
                with anyio.fail_after(30):
                    while "error" not in outcome:  # noqa: ASYNC110 - the call ends by itself
                        await anyio.sleep(0.05)
            assert isinstance(outcome["error"], ConnectionClosedError)
            assert "connection closed while calling box_exec" in str(outcome["error"])
            closed = await ws.receive(timeout=30)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    # The sandbox and the server outlive their daemon; the server writes while no daemon reads.
    assert len(sandboxes_of(backend, data_dir)) == 1
    await eventually(lambda: workspace_file(data_dir, "later-while-away") is not None)

    successor = launch(daemons, backend, data_dir)
    assert "took over 1 of 1 sessions" in successor.log()
    await check_taken_over(successor, before, data_dir, "while-away")
    assert await readoptions(successor) == {backend: 1.0}  # /metrics counts the take-over


async def readoptions(daemon: Daemon) -> dict[str, float]:
    """``boxruntime_readoptions_total`` by backend, read from the daemon's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.http}/metrics", headers=daemon.headers()) as reply:
        assert reply.status == 200
        text = await reply.text()
    return {
        sample.labels["backend"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "boxruntime_readoptions_total"
    }


async def test_a_handover_passes_on_sessions_and_unread_output(
    backend: str, data_dir: Path, daemons: list[Daemon]
) -> None:
    first = launch(daemons, backend, data_dir)
    async with connect(first) as peer, aiohttp.ClientSession() as http:
        started = await start_server(peer)
        session = await peer.call("box_get_session", {"session_id": SESSION})
        before = {"created_at": session["created_at"], "pid": started["pid"]}
        async with http.ws_connect(relay_url(first), protocols=("mcp",)) as ws:
            await ws.send_str("later 0.2 read-by-the-first")
        # The line comes while no client is attached: the first daemon reads and keeps it.
        await eventually(lambda: workspace_file(data_dir, "later-read-by-the-first") is not None)
        for _ in range(300):
            session = await peer.call("box_get_session", {"session_id": SESSION})
            if session["managed_processes"]["mcp"]["pending_output_bytes"] > 0:
                break
            await anyio.sleep(0.1)
        assert session["managed_processes"]["mcp"]["pending_output_bytes"] > 0
    # The upgrade's handover: the daemon leaves, its sandboxes stay.
    assert first.stop(signal.SIGUSR2) == 0
    assert "sandboxes left running for the next daemon" in first.log()
    assert len(sandboxes_of(backend, data_dir)) == 1

    successor = launch(daemons, backend, data_dir)
    await check_taken_over(successor, before, data_dir, "read-by-the-first")


async def test_keep_sandboxes_makes_sigterm_a_handover(backend: str, data_dir: Path, daemons: list[Daemon]) -> None:
    first = launch(daemons, backend, data_dir, BOXRUNTIME_KEEP_SANDBOXES="1")
    async with connect(first) as peer:
        await peer.call("box_exec", {"session_id": "kept", "cmd": "echo 1 > /workspace/n"}, timeout=120)
    assert first.stop(signal.SIGTERM) == 0
    assert len(sandboxes_of(backend, data_dir)) == 1
    successor = launch(daemons, backend, data_dir)
    async with connect(successor) as peer:
        again = await peer.call("box_exec", {"session_id": "kept", "cmd": "cat /workspace/n"}, timeout=60)
        assert again["stdout"] == "1"
    assert successor.stop(signal.SIGTERM) == 0  # without the setting: every sandbox is removed
    assert sandboxes_of(backend, data_dir) == []


async def test_a_successor_never_touches_a_live_daemons_sandboxes(
    backend: str, data_dir: Path, daemons: list[Daemon]
) -> None:
    live = launch(daemons, backend, data_dir)
    doomed = launch(daemons, backend, data_dir)
    for daemon, name in ((live, "live-one"), (doomed, "doomed-one")):
        async with connect(daemon) as peer:
            await peer.call("box_exec", {"session_id": name, "cmd": f"echo {name} > /workspace/who"}, timeout=120)
    live_sandbox = (await _session(live, "live-one"))["backend_session_id"]
    doomed.stop(signal.SIGKILL)
    successor = launch(daemons, backend, data_dir)
    async with connect(successor) as peer:
        listed = await peer.call("box_get_sessions", {})
        names = sorted(s["session_id"] for s in listed["sessions"])
        assert names == ["doomed-one"]  # the dead daemon's, never the live one's
        who = await peer.call("box_exec", {"session_id": "doomed-one", "cmd": "cat /workspace/who"}, timeout=60)
        assert who["stdout"] == "doomed-one"
    # The live daemon's session is where it was, the same sandbox, still working.
    assert (await _session(live, "live-one"))["backend_session_id"] == live_sandbox
    async with connect(live) as peer:
        who = await peer.call("box_exec", {"session_id": "live-one", "cmd": "cat /workspace/who"}, timeout=60)
        assert who["stdout"] == "live-one"
    assert len(sandboxes_of(backend, data_dir)) == 2


async def _session(daemon: Daemon, session_id: str) -> dict[str, Any]:
    async with connect(daemon) as peer:
        found: dict[str, Any] = await peer.call("box_get_session", {"session_id": session_id})
        return found


@pytest.mark.parametrize("leave", [signal.SIGKILL, signal.SIGUSR2], ids=["crash", "handover"])
async def test_a_gvisor_sandbox_is_taken_over_without_its_managed_processes(
    docker_engine: object, data_dir: Path, leave: signal.Signals
) -> None:
    """Under gVisor a managed process's stdio are its daemon's own sockets, which end with it:
    the successor takes over the sandbox (the same one: what its /tmp holds), not the process,
    ends what is left of it, and starts processes of its own there as usual."""
    started: list[Daemon] = []
    try:
        first = start_daemon(data_dir, "--backend", "gvisor")
        started.append(first)
        async with connect(first) as peer:
            await start_server(peer)
            created = (await peer.call("box_get_session", {"session_id": SESSION}))["created_at"]
            await peer.call(
                "box_exec", {"session_id": SESSION, "persistent": True, "cmd": "echo same > /tmp/sandbox"}, timeout=60
            )
        first.stop(leave)
        assert len(sandboxes_of("gvisor", data_dir)) == 1

        successor = start_daemon(data_dir, "--backend", "gvisor")
        started.append(successor)
        assert "took over 1 of 1 sessions" in successor.log()
        async with connect(successor) as peer:
            session = await peer.call("box_get_session", {"session_id": SESSION})
            assert session["created_at"] == created and not session.get("managed_processes")  # absent when none
            kept = await peer.call(
                "box_exec", {"session_id": SESSION, "persistent": True, "cmd": "cat /tmp/sandbox"}, timeout=60
            )
            assert kept["stdout"] == "same"
            for _ in range(300):  # the stray is sent SIGKILL during the take-over
                procs = await peer.call(
                    "box_exec",
                    {"session_id": SESSION, "persistent": True, "cmd": "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"},
                    timeout=60,
                )
                if "server.py" not in procs["stdout"]:
                    break
                await anyio.sleep(0.1)
            assert "server.py" not in procs["stdout"]
            spec = {"process_id": "mcp", "command": "python3", "args": ["-u", "/workspace/server.py"]}
            await peer.call("box_start_managed_process", {"session_id": SESSION, "spec": spec}, timeout=60)
        async with aiohttp.ClientSession() as http, http.ws_connect(relay_url(successor), protocols=("mcp",)) as ws:
            await ws.send_str("again")
            assert await receive_json(ws) == {"echo": "again"}
    finally:
        for daemon in started:
            daemon.stop()
        assert sandboxes_of("gvisor", data_dir) == []
