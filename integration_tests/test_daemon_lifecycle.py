"""The daemon as a process: auth, bind policy, health, bad input, capacity, sharing one engine
with other daemons, and leaving nothing behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import docker
import pytest

from boxruntime.errors import BoxCapacityExceededError
from integration_tests.daemon import ROOT, Daemon, connect, containers_of, daemon_env, free_port, start_daemon

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

TOKEN = "t" * 16 + "0123456789abcdef-secret"


async def test_token_is_required_before_the_upgrade(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    daemon = start_daemon(data_dir, "--backend", "docker", token=TOKEN)
    try:
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-LangBot-Box-Control-Token": TOKEN[:-1]}):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(daemon.url, headers=headers)
                assert refused.value.status == 401
        for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"X-LangBot-Box-Control-Token": TOKEN}):
            async with connect(daemon, headers=headers) as peer:
                assert (await peer.call("__ping", {})) == {}
    finally:
        daemon.stop()


def test_refuses_public_bind_without_token(data_dir: Path) -> None:
    argv = [sys.executable, "-m", "boxruntime", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    result = subprocess.run(argv, env=daemon_env(data_dir), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in result.stderr


def test_refuses_short_token(data_dir: Path) -> None:
    argv = [sys.executable, "-m", "boxruntime", "serve", "--port", str(free_port())]
    env = daemon_env(data_dir, BOXRUNTIME_TOKEN="short")
    result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "at least 32 characters" in result.stderr


async def test_public_bind_with_token(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    daemon = start_daemon(data_dir, "--backend", "docker", token=TOKEN, host="0.0.0.0")
    try:
        daemon.host = "127.0.0.1"
        async with connect(daemon) as peer:
            assert (await peer.call("box_health", {}))["available"] is True
    finally:
        daemon.stop()


async def test_health_endpoints(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.http}/healthz") as live:
            assert live.status == 200 and (await live.json())["live"] is True
        async with http.get(f"{daemon.http}/readyz") as ready:
            body = await ready.json()
            assert ready.status == 200 and body["ready"] is True and body["backend"]["name"] == "docker"
    assert "loop=uvloop" in daemon.log()  # the default where uvloop is installed (it is a dependency)


async def test_malformed_frames_never_hurt_the_daemon(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(daemon.url) as ws:
        for junk in ("not json", "[1, 2]", '{"no": "kind"}', "{", '{"seq_id": 5, "action": "box_exec"}'):
            await ws.send_str(junk)
        await ws.send_bytes(b"\x00\x01binary")
        reply = json.loads((await ws.receive(timeout=30)).data)
        # The request without data is answered with a typed error; the rest was dropped quietly.
        assert reply["seq_id"] == 5 and reply["code"] == 1
        assert reply["message"].startswith("BoxValidationError:")
        await ws.send_str(json.dumps({"seq_id": 6, "action": "box_nope", "data": {}}))
        reply = json.loads((await ws.receive(timeout=30)).data)
        assert reply == {
            "seq_id": 6,
            "code": 1,
            "message": "BoxActionNotFoundError: Action box_nope not found",
            "data": {},
            "chunk_status": "continue",
        }
        await ws.send_str(json.dumps({"seq_id": 7, "action": "__ping", "data": {}}))
        assert json.loads((await ws.receive(timeout=30)).data)["code"] == 0


async def test_capacity_is_a_typed_error(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    daemon = start_daemon(data_dir, "--backend", "docker", env={"BOXRUNTIME_MAX_SESSIONS": "2"})
    try:
        async with connect(daemon) as peer:
            for name in ("a", "b"):
                await peer.call("box_create_session", {"session_id": name}, timeout=120)
            with pytest.raises(BoxCapacityExceededError, match="capacity reached"):
                await peer.call("box_create_session", {"session_id": "c"}, timeout=120)
            await peer.call("box_delete_session", {"session_id": "a"})
            await peer.call("box_create_session", {"session_id": "c"}, timeout=120)
    finally:
        daemon.stop()
    assert containers_of(data_dir) == []


async def test_sessions_survive_client_disconnects(daemon: Daemon) -> None:
    async with connect(daemon) as peer:
        await peer.call("box_exec", {"session_id": "keep", "cmd": "echo 1 > /workspace/n"}, timeout=120)
    async with connect(daemon) as peer:
        again = await peer.call("box_exec", {"session_id": "keep", "cmd": "cat /workspace/n"}, timeout=120)
        assert again["stdout"] == "1"


async def test_daemons_sharing_an_engine_never_remove_each_others_containers(
    docker_engine: docker.DockerClient, tmp_path: Path
) -> None:
    shared = tmp_path / "shared-data"
    other = tmp_path / "other-data"
    first = start_daemon(shared, "--backend", "docker")
    second = start_daemon(shared, "--backend", "docker")  # same data dir, alive
    third = start_daemon(other, "--backend", "docker")  # another data dir
    try:
        for daemon, name in ((first, "one"), (second, "two"), (third, "three")):
            async with connect(daemon) as peer:
                await peer.call("box_create_session", {"session_id": name}, timeout=120)
        first_id = sorted(containers_of(shared))
        assert len(first_id) == 2
        # A daemon that dies hard leaves its container; the next daemon on that data dir takes
        # it over (test_readopt.py), or removes it without re-adoption, but never touches the
        # container of the live daemon beside it.
        killed = next(
            c.name for c in docker_engine.containers.list(all=True, filters={"label": "boxruntime.session_id=one"})
        )
        first.stop(signal.SIGKILL)
        successor = start_daemon(shared, "--backend", "docker", env={"BOXRUNTIME_READOPT": "0"})
        try:
            remaining = containers_of(shared)
            assert len(remaining) == 1 and remaining[0] != killed and remaining[0] in first_id
            assert len(containers_of(other)) == 1
        finally:
            successor.stop()
    finally:
        for daemon in (first, second, third):
            daemon.stop()
    assert containers_of(shared) == [] and containers_of(other) == []


def test_stdio_daemon_exits_on_eof_and_removes_its_sandboxes(
    docker_engine: docker.DockerClient, data_dir: Path, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "boxruntime", "serve", "--stdio", "--backend", "docker"]
    with (tmp_path / "stdio.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=daemon_env(data_dir), cwd=ROOT
        )
    request = {"seq_id": 1, "action": "box_exec", "data": {"session_id": "io", "cmd": "echo via-stdio"}}
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((json.dumps(request) + "\n").encode())
    proc.stdin.flush()
    reply = json.loads(proc.stdout.readline())
    assert reply["code"] == 0 and reply["data"]["stdout"] == "via-stdio"
    assert len(containers_of(data_dir)) == 1
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    assert containers_of(data_dir) == []
    assert "loop=uvloop" in (tmp_path / "stdio.log").read_text()
