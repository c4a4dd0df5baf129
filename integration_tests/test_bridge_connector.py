"""The bridge's connector and client against real daemon processes on Docker: stdio spawn,
WebSocket with a token, reconnect after the daemon is killed and restarted, heartbeat failure
detection (a frozen daemon), typed errors, and clean close."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import docker
import pytest

from boxruntime.errors import (
    BoxAuthError,
    BoxRuntimeUnavailableError,
    BoxSessionNotFoundError,
    BoxValidationError,
)
from boxruntime.models import BoxSpec, FsReadRequest, OutputChunk, StreamedResult
from integration_tests.daemon import ROOT, Daemon, containers_of, daemon_env, start_daemon, wait_ready
from langbot_bridge import BoxClient, Connector, RemoteTarget, SpawnTarget, Timing, chunk_bytes

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

# Short intervals so tests never wait the real 20 s heartbeat or 3 s backoff.
FAST = Timing(heartbeat_interval=0.3, heartbeat_misses=3, ping_timeout=2.5, backoff_initial=0.2, backoff_max=1.0)
BOUND = 90  # seconds: a bound so a broken connector fails the test instead of hanging it


def spawn_target(data_dir: Path) -> SpawnTarget:
    return SpawnTarget(args=("--backend", "docker", "--log-level", "warning"), env=daemon_env(data_dir))


async def eventually(condition: Callable[[], bool], what: str, timeout: float = BOUND) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def token_daemon(docker_engine: docker.DockerClient, data_dir: Path, token: str) -> Iterator[Daemon]:
    proc = start_daemon(data_dir, "--backend", "docker", token=token)
    try:
        yield proc
    finally:
        proc.stop()
        assert containers_of(data_dir) == []


def restart_on_same_port(old: Daemon) -> Daemon:
    """The same daemon again: same data dir, port and token (what an operator's restart does)."""
    argv = [sys.executable, "-m", "boxruntime", "serve", "--host", old.host, "--port", str(old.port)]
    argv += ["--backend", "docker"]
    extra = {"BOXRUNTIME_TOKEN": old.token} if old.token else {}
    log_path = old.data_dir.parent / f"daemon-{old.port}-again.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=daemon_env(old.data_dir, **extra), cwd=ROOT
        )
    again = Daemon(old.data_dir, old.port, proc, log_path, old.token)
    wait_ready(again)
    return again


@contextlib.asynccontextmanager
async def connected(target: SpawnTarget | RemoteTarget) -> AsyncIterator[Connector]:
    async with Connector(target, timing=FAST) as connector:
        await connector.wait_available(BOUND)
        yield connector


async def echo(client: BoxClient, text: str, session_id: str = "c1") -> str:
    result = await client.exec(BoxSpec(session_id=session_id, cmd=f"echo {text}"))
    assert result.exit_code == 0, result
    return result.stdout


# ── stdio ───────────────────────────────────────────────────────────────


async def test_spawned_daemon_over_stdio_serves_the_client(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    async with connected(spawn_target(data_dir)) as connector:
        pid = connector.pid
        assert pid is not None and alive(pid)
        client = BoxClient(connector)
        status = await client.status()
        assert status.backend.name == "docker" and status.backend.available
        assert await echo(client, "over-stdio") == "over-stdio"

        chunks: list[bytes] = []
        final = None
        spec = BoxSpec(session_id="c1", cmd="printf 'a\\n'; sleep 0.2; printf 'b\\n' >&2; printf '\\377'; exit 3")
        async for item in client.exec_stream(spec):
            if isinstance(item, OutputChunk):
                chunks.append(chunk_bytes(item))
            else:
                assert isinstance(item, StreamedResult)
                final = item.result
        assert final is not None and final.exit_code == 3
        assert b"".join(chunks).replace(b"b\n", b"") == b"a\n\xff"  # raw bytes, binary included

        sessions = await client.list_sessions()
        assert [s.session_id for s in sessions] == ["c1"]
        relay = await client.relay_info()  # a stdio daemon relays on its own loopback port, with a token
        assert relay.base_url is not None and relay.base_url.startswith("http://127.0.0.1:") and relay.token
        assert (await client.get_session("c1")).backend_name == "docker"
    assert not alive(pid), "the spawned daemon must be gone after close"
    assert containers_of(data_dir) == []


async def test_daemon_errors_come_back_as_the_same_types(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    async with connected(spawn_target(data_dir)) as connector:
        client = BoxClient(connector)
        with pytest.raises(BoxSessionNotFoundError, match="session nope not found"):
            await client.get_session("nope")
        with pytest.raises(BoxSessionNotFoundError):
            await client.fs_read(FsReadRequest(session_id="nope", path="x"))
        with pytest.raises(BoxValidationError, match="cmd must not be empty"):
            await client.exec(BoxSpec(session_id="c1", cmd="  "))
        with pytest.raises(BoxSessionNotFoundError):
            await client.delete_session("nope")


async def test_close_shuts_down_a_spawned_daemon_cleanly(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    async with connected(spawn_target(data_dir)) as connector:
        client = BoxClient(connector)
        await echo(client, "x", session_id="gone")
        assert containers_of(data_dir) != []
        pid = connector.pid
        assert pid is not None
    # box_shutdown dropped the session with its files, then the daemon exited on EOF.
    assert not alive(pid)
    assert containers_of(data_dir) == []
    assert list((data_dir / "workspaces").iterdir()) == []
    assert not connector.available
    with pytest.raises(BoxRuntimeUnavailableError, match="closed"):
        await connector.call("box_status", {})


async def test_a_spawned_daemon_that_dies_is_restarted(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    async with connected(spawn_target(data_dir)) as connector:
        client = BoxClient(connector)
        first = connector.pid
        assert first is not None
        await echo(client, "before")
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: connector.connects >= 2 and connector.available, "a new daemon")
        assert connector.pid not in (None, first)
        assert not alive(first)
        assert await echo(client, "after") == "after"
    assert containers_of(data_dir) == []  # the new daemon removed the dead one's sandboxes


async def test_heartbeat_replaces_a_hung_spawned_daemon(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    async with connected(spawn_target(data_dir)) as connector:
        first = connector.pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)  # alive, pipes open, but never answers again
        try:
            assert await connector.wait_unavailable(BOUND)
            assert connector.last_error is not None and "heartbeats in a row" in str(connector.last_error)
            await eventually(lambda: connector.available and connector.pid not in (None, first), "a new daemon")
            await eventually(lambda: not alive(first), "the hung daemon killed")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(first, signal.SIGKILL)
        assert await echo(BoxClient(connector), "fresh") == "fresh"


# ── WebSocket ───────────────────────────────────────────────────────────


async def test_websocket_with_token(token_daemon: Daemon, token: str) -> None:
    async with connected(RemoteTarget(token_daemon.url, token)) as connector:
        assert connector.pid is None
        client = BoxClient(connector)
        assert await echo(client, "over-ws", session_id="kept") == "over-ws"
    # A remote daemon is shared: closing our connection leaves its sessions alone.
    async with connected(RemoteTarget(f"http://127.0.0.1:{token_daemon.port}", token)) as again:
        sessions = await BoxClient(again).list_sessions()
        assert [s.session_id for s in sessions] == ["kept"]


@pytest.mark.parametrize("offered", ["wrong-" + "x" * 40, None])
async def test_websocket_auth_failure_is_a_typed_clear_error(token_daemon: Daemon, offered: str | None) -> None:
    async with Connector(RemoteTarget(token_daemon.url, offered), timing=FAST, reconnect=False) as connector:
        assert not connector.available
        assert isinstance(connector.last_error, BoxAuthError)
        expected = "refused the token" if offered else "requires a token and none was given"
        with pytest.raises(BoxAuthError, match=rf"{expected} \(HTTP 401\)"):
            connector.require()
        with pytest.raises(BoxAuthError):
            await connector.wait_available(1)


async def test_reconnects_after_the_remote_daemon_is_killed_and_restarted(
    docker_engine: docker.DockerClient, data_dir: Path, token: str
) -> None:
    first = start_daemon(data_dir, "--backend", "docker", token=token)
    second: Daemon | None = None
    try:
        async with connected(RemoteTarget(first.url, token)) as connector:
            client = BoxClient(connector)
            assert await echo(client, "one") == "one"
            first.stop(signal.SIGKILL)
            assert await connector.wait_unavailable(BOUND)
            with pytest.raises(BoxRuntimeUnavailableError, match="unavailable"):
                await client.status()
            second = restart_on_same_port(first)
            await connector.wait_available(BOUND)
            assert connector.connects >= 2
            assert await echo(client, "two") == "two"
    finally:
        if second is not None:
            second.stop()
    assert containers_of(data_dir) == []


async def test_heartbeat_detects_a_frozen_remote_daemon(token_daemon: Daemon, token: str) -> None:
    timing = Timing(
        heartbeat_interval=0.3,
        heartbeat_misses=3,
        ping_timeout=2.5,
        backoff_initial=0.2,
        backoff_max=1.0,
        connect_timeout=3,
    )
    async with Connector(RemoteTarget(token_daemon.url, token), timing=timing) as connector:
        await connector.wait_available(BOUND)
        os.kill(token_daemon.proc.pid, signal.SIGSTOP)  # the TCP connection stays open; nothing answers
        try:
            assert await connector.wait_unavailable(BOUND)
            assert "heartbeats in a row got no answer" in str(connector.last_error)
        finally:
            os.kill(token_daemon.proc.pid, signal.SIGCONT)
        await connector.wait_available(BOUND)
        assert connector.connects >= 2
        assert await echo(BoxClient(connector), "thawed") == "thawed"
