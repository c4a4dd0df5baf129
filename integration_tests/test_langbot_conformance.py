"""LangBot 0.5.0a2's real Box client drives our daemon, unchanged, over both of its transports.

Every test talks to a real ``boxruntime`` process on each backend (Docker, nsjail, the
unsafe host backend, and the e2b backend, whose sandboxes run on a second daemon that speaks
E2B's API: integration_tests/e2b_cluster.py) through LangBot's own ``ActionRPCBoxClient`` + ``Handler`` + connection
classes (``langbot-plugin==0.5.0a2``):

* ``ws``: their ``WebSocketClientController`` against a loopback daemon without a token (the
  0.5 client sends no auth headers), plus token-protected daemons reached through their
  ``WebSocketConnection`` on a websocket opened with the token header (the host backend is
  never served over a WebSocket without a token);
* ``stdio``: their ``StdioClientController`` spawning ``boxruntime serve --stdio``; closing its
  stdin must make the daemon exit by itself and leave no container.

Errors must arrive as LangBot's own exception types (``langbot_plugin.box.errors``), since
LangBot's client rebuilds them from the ``"<ClassName>: ..."`` wire message.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import string
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest
import websockets
from langbot_plugin.box.actions import LangBotToBoxAction
from langbot_plugin.box.errors import (
    BoxRuntimeUnavailableError,
    BoxSessionConflictError,
    BoxSessionNotFoundError,
    BoxValidationError,
)
from langbot_plugin.box.models import (
    BoxExecutionResult,
    BoxExecutionStatus,
    BoxMountSpec,
    BoxSessionInfo,
    BoxSpec,
)
from langbot_plugin.entities.io.errors import ActionCallError

from integration_tests.daemon import Daemon, containers_of, sandboxes_of, start_daemon
from integration_tests.e2b_cluster import backend_env, served_by
from integration_tests.e2b_site import E2BSite
from integration_tests.langbot_client import LangBotLink, over_stdio, over_websocket, over_websocket_with_headers

pytestmark = [pytest.mark.langbot, pytest.mark.docker, pytest.mark.anyio]

TRANSPORTS = ["ws", "stdio"]
BACKENDS = ["docker", "nsjail", "host", "e2b"]
# The keys LangBot's BoxSessionInfo reads (reference §C.4); our extensions may come on top.
SESSION_INFO_KEYS = set(BoxSessionInfo.model_fields)


# ── fixtures ─────────────────────────────────────────────────────────────


@pytest.fixture
def langbot_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LangBot's Handler creates ``data/temp/lbp`` in the current directory: keep it in tmp."""
    cwd = tmp_path / "langbot"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def e2b_env(backend: str, data_dir: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """For the e2b backend: the test E2B server, and the settings that point a daemon at it (as a
    user sets them: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY). Nothing for the others."""
    if backend != "e2b":
        yield {}
        return
    cluster: E2BSite = request.getfixturevalue("e2b_server")
    with served_by(cluster, data_dir):
        yield backend_env(cluster)


@pytest.fixture
def ws_daemon(
    transport: str, backend: str, data_dir: Path, docker_engine: docker.DockerClient, e2b_env: dict[str, str]
) -> Iterator[Daemon | None]:
    """A loopback WebSocket daemon for ``ws``, token-less unless the backend is host; it must
    leave nothing behind."""
    if transport != "ws":
        yield None
        return
    token = secrets.token_urlsafe(32) if backend == "host" else None
    first = "docker" if backend == "docker" else "local"
    daemon = start_daemon(data_dir, "--backend", first, token=token, env=e2b_env)
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log()[-3000:]
        assert sandboxes_of(backend, data_dir) == []


@pytest.fixture
async def langbot(
    anyio_backend: str,
    transport: str,
    backend: str,
    ws_daemon: Daemon | None,
    data_dir: Path,
    langbot_cwd: Path,
    docker_engine: docker.DockerClient,
    e2b_env: dict[str, str],
) -> AsyncIterator[LangBotLink]:
    if ws_daemon is not None:
        if ws_daemon.token:
            opened = over_websocket_with_headers(ws_daemon.url, {"X-LangBot-Box-Control-Token": ws_daemon.token})
        else:
            opened = over_websocket(ws_daemon.url)
        async with opened as link:
            link.backend = backend
            if backend != "docker":
                await link.client.init({"backend": backend})  # what LangBot sends on connect
            yield link
        return
    async with over_stdio(data_dir, langbot_cwd, backend, env=e2b_env) as link:
        link.backend = backend
        if backend != "docker":
            await link.client.init({"backend": backend})
        yield link
    # Closing stdin is all LangBot does when it goes away: the daemon must exit on its own
    # and take its sandboxes with it.
    assert link.exit_code == 0, f"stdio daemon exit status after stdin EOF: {link.exit_code}"
    assert sandboxes_of(backend, data_dir) == []


def spec(session_id: str, cmd: str = "", **fields: object) -> BoxSpec:
    """A request built with LangBot's own model (its client-side validation applies)."""
    return BoxSpec(session_id=session_id, cmd=cmd, **fields)


async def workspace_seen_by_commands(langbot: LangBotLink, session_id: str) -> str:
    """What ``pwd`` says in the workspace: /workspace in a sandbox; on the host backend (as on
    LangBot's) the host directory it stands for, and on the e2b backend (as on LangBot's) where
    E2B's user may write, /home/user/workspace: each names it in $LANGBOT_BOX_WORKSPACE."""
    if langbot.backend not in ("host", "e2b"):
        return "/workspace"
    return (await langbot.client.execute(spec(session_id, 'printf %s "$LANGBOT_BOX_WORKSPACE"'))).stdout


# ── handshake, backend, status ───────────────────────────────────────────


async def test_initialize_backend_info_and_status(langbot: LangBotLink, data_dir: Path) -> None:
    client = langbot.client
    await client.initialize()  # box_health; raises BoxRuntimeUnavailableError when unhealthy

    info = await client.get_backend_info()
    assert info["name"] == langbot.backend
    assert info["available"] is True

    status = await client.get_status()
    assert status["backend"]["name"] == langbot.backend
    assert status["backend"]["available"] is True
    assert status["active_sessions"] == 0
    assert status["managed_processes"] == 0
    assert isinstance(status["session_ttl_sec"], int) and status["session_ttl_sec"] > 0
    assert await client.get_sessions() == []

    # The box_init payload LangBot sends on connect when its box config is not empty.
    await client.init({"backend": langbot.backend})
    assert (await client.get_backend_info())["name"] == langbot.backend

    # A session counts once it exists.
    result = await client.execute(spec("status-probe", "true"))
    assert result.ok
    status = await client.get_status()
    assert status["active_sessions"] == 1
    assert len(sandboxes_of(langbot.backend, data_dir)) == 1


# ── exec ─────────────────────────────────────────────────────────────────


async def test_execute_exit_codes_streams_env_and_workdir(langbot: LangBotLink) -> None:
    client = langbot.client

    ok = await client.execute(spec("exec", "echo hello"))
    assert isinstance(ok, BoxExecutionResult)
    assert ok.session_id == "exec"
    assert ok.backend_name == langbot.backend
    assert ok.status == BoxExecutionStatus.COMPLETED
    assert ok.exit_code == 0 and ok.ok
    assert ok.stdout == "hello"
    assert ok.stderr == ""
    assert ok.duration_ms >= 0

    failed = await client.execute(spec("exec", "echo out; echo oops >&2; exit 3"))
    assert failed.status == BoxExecutionStatus.COMPLETED
    assert failed.exit_code == 3 and not failed.ok
    assert failed.stdout == "out"
    assert failed.stderr == "oops"

    env = await client.execute(
        spec("exec", 'printf "%s|%s" "$GREETING" "$SPACED"', env={"GREETING": "hi there", "SPACED": "a  b"})
    )
    assert env.ok and env.stdout == "hi there|a  b"
    # env is per command, not sticky in the session.
    assert (await client.execute(spec("exec", 'printf "[%s]" "$GREETING"'))).stdout == "[]"

    workspace = await workspace_seen_by_commands(langbot, "exec")
    sub = await client.execute(spec("exec", "pwd && echo data > here.txt", workdir="/workspace/sub"))
    assert sub.ok and sub.stdout == f"{workspace}/sub"
    listed = await client.execute(spec("exec", "pwd && cat sub/here.txt"))
    assert listed.ok and listed.stdout == f"{workspace}\ndata"


async def test_hundred_kilobyte_command(langbot: LangBotLink, transport: str) -> None:
    """Over WS LangBot 0.5 sends this request as two separate 64 KiB-sliced messages (their own
    daemon drops them); over stdio as chunk_start/chunk_data/chunk_end lines."""
    rng = random.Random(20240605)
    payload = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(100_000))
    request_bytes = len(spec("big", f"p={payload}").model_dump_json())
    assert request_bytes > 64 * 1024  # really beyond one LangBot WS slice

    result = await langbot.client.execute(
        spec("big", f'p={payload}; printf %s "$p" | wc -c; printf %s "$p" | sha256sum')
    )
    assert result.ok, result.stderr
    count, digest = result.stdout.splitlines()
    assert int(count) == 100_000
    assert digest.split()[0] == hashlib.sha256(payload.encode()).hexdigest()
    # The connection is still in step afterwards.
    assert (await langbot.client.execute(spec("big", "echo after"))).stdout == "after"


async def test_seven_hundred_kilobyte_output(langbot: LangBotLink) -> None:
    result = await langbot.client.execute(spec("bigout", "python3 -c \"print('x' * 700000)\""))
    assert result.ok, result.stderr
    assert len(result.stdout) == 700_000
    assert result.stdout == "x" * 700_000
    # Output with a known digest, to prove it is not only the right length but the right bytes.
    text = await langbot.client.execute(
        spec("bigout", "python3 -c \"import sys; sys.stdout.write(''.join(chr(97 + i % 26) for i in range(700000)))\"")
    )
    expected = "".join(chr(97 + i % 26) for i in range(700_000))
    assert text.ok and text.stdout == expected


async def test_timeout_keeps_session_and_files(langbot: LangBotLink) -> None:
    client = langbot.client
    before = await client.execute(spec("slow", "echo survives > /workspace/keep.txt && echo $$ > /tmp/marker"))
    assert before.ok
    info_before = await client.get_session("slow")

    timed_out = await client.execute(spec("slow", "sleep 31.25", timeout_sec=2))
    assert timed_out.status == BoxExecutionStatus.TIMED_OUT
    assert timed_out.exit_code is None
    assert not timed_out.ok
    assert timed_out.session_id == "slow"
    assert timed_out.stderr  # what was captured, or "Command timed out after 2 seconds."

    # Unlike LangBot's own daemon, the session is not destroyed: same sandbox, same files.
    info_after = await client.get_session("slow")
    assert info_after["backend_session_id"] == info_before["backend_session_id"]
    after = await client.execute(spec("slow", "cat /workspace/keep.txt && test -f /tmp/marker && echo same-sandbox"))
    assert after.ok, after.stderr
    assert after.stdout == "survives\nsame-sandbox"
    # And the timed-out command is gone, not still running in the sandbox (nor, on the host
    # backend, anywhere on the machine).
    listing = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null"
    procs = await client.execute(spec("slow", f"{listing} | grep -c '^sleep 31.25 ' || true"))
    assert procs.ok and procs.stdout == "0"


# ── sessions ─────────────────────────────────────────────────────────────


async def test_session_payloads(langbot: LangBotLink, data_dir: Path) -> None:
    client = langbot.client
    created = await client.create_session(spec("sess-a", memory_mb=256, pids_limit=64, cpus=0.5))
    assert set(created) >= SESSION_INFO_KEYS
    parsed = BoxSessionInfo.model_validate(created)
    assert parsed.session_id == "sess-a"
    assert parsed.backend_name == langbot.backend
    assert parsed.backend_session_id
    assert parsed.image == "rockchin/langbot-sandbox:latest"  # what LangBot asked for
    assert parsed.network.value == "off"
    assert parsed.mount_path == "/workspace"
    assert (parsed.memory_mb, parsed.pids_limit, parsed.cpus) == (256, 64, 0.5)
    assert parsed.persistent is False
    assert parsed.read_only_rootfs is True
    assert parsed.last_used_at >= parsed.created_at
    assert created["created_at"].endswith("Z") or "+00:00" in created["created_at"]

    # Creating again with the same spec reuses the session.
    again = await client.create_session(spec("sess-a", memory_mb=256, pids_limit=64, cpus=0.5))
    assert again["backend_session_id"] == created["backend_session_id"]

    fetched = await client.get_session("sess-a")
    assert BoxSessionInfo.model_validate(fetched).backend_session_id == parsed.backend_session_id
    assert fetched["memory_mb"] == 256

    await client.create_session(spec("sess-b"))
    sessions = await client.get_sessions()
    assert sorted(s["session_id"] for s in sessions) == ["sess-a", "sess-b"]
    for item in sessions:
        BoxSessionInfo.model_validate(item)
    assert len(sandboxes_of(langbot.backend, data_dir)) == 2

    assert await client.delete_session("sess-a") is None  # their client returns nothing
    assert [s["session_id"] for s in await client.get_sessions()] == ["sess-b"]
    assert len(sandboxes_of(langbot.backend, data_dir)) == 1
    with pytest.raises(BoxSessionNotFoundError):
        await client.get_session("sess-a")
    # The raw payload of a delete, as the wire carries it.
    deleted = await langbot.call(LangBotToBoxAction.DELETE_SESSION, {"session_id": "sess-b"})
    assert deleted == {"deleted": "sess-b"}
    assert await client.get_sessions() == []
    assert sandboxes_of(langbot.backend, data_dir) == []


# ── errors arrive as LangBot's own types ─────────────────────────────────


async def test_session_not_found_errors(langbot: LangBotLink) -> None:
    client = langbot.client
    with pytest.raises(BoxSessionNotFoundError) as got:
        await client.get_session("no-such-session")
    assert "BoxSessionNotFoundError:" in str(got.value)
    assert "no-such-session" in str(got.value)

    with pytest.raises(BoxSessionNotFoundError):
        await client.delete_session("no-such-session")

    # The connection is unharmed by errors.
    assert (await client.get_backend_info())["available"] is True


async def test_session_conflict_error(langbot: LangBotLink) -> None:
    client = langbot.client
    await client.create_session(spec("conflict", memory_mb=256))
    with pytest.raises(BoxSessionConflictError) as got:
        await client.create_session(spec("conflict", memory_mb=1024))
    assert "BoxSessionConflictError:" in str(got.value)
    assert "memory_mb" in str(got.value)
    # exec with an incompatible spec is refused the same way, and runs nothing.
    with pytest.raises(BoxSessionConflictError):
        await client.execute(spec("conflict", "touch /workspace/should-not-exist", memory_mb=1024))
    check = await client.execute(spec("conflict", "test ! -e /workspace/should-not-exist && echo clean", memory_mb=256))
    assert check.ok and check.stdout == "clean"
    assert (await client.get_session("conflict"))["memory_mb"] == 256


async def test_validation_errors(langbot: LangBotLink) -> None:
    client = langbot.client
    # Passes their model (cmd defaults to ""/is stripped), fails ours: exec needs a command.
    with pytest.raises(BoxValidationError) as got:
        await client.execute(spec("valid", "   "))
    assert "BoxValidationError:" in str(got.value)
    assert "cmd" in str(got.value)

    # Passes their BoxMountSpec (absolute), fails ours (not normalised: could hide a traversal).
    sneaky = spec("valid", "true", extra_mounts=[BoxMountSpec(host_path="/tmp", mount_path="/mnt/../etc")])
    with pytest.raises(BoxValidationError):
        await client.execute(sneaky)

    # Passes their env coercion, fails ours: not a valid environment variable name.
    with pytest.raises(BoxValidationError):
        await client.execute(spec("valid", "true", env={"BAD=NAME": "1"}))

    # Their model refuses timeout_sec=0 client-side, so send the raw payload through their
    # Handler: the daemon must refuse it with the type their client maps to BoxValidationError.
    with pytest.raises(ActionCallError) as raw:
        await langbot.call(LangBotToBoxAction.EXEC, {"session_id": "valid", "cmd": "true", "timeout_sec": 0})
    assert str(raw.value).startswith("BoxValidationError:")
    assert "timeout_sec" in str(raw.value)
    # The same payload through the client's own call path comes back as their type.
    with pytest.raises(BoxValidationError):
        await client._call(LangBotToBoxAction.EXEC, {"session_id": "valid", "cmd": "true", "timeout_sec": 0})
    with pytest.raises(BoxValidationError):
        await client._call(LangBotToBoxAction.EXEC, {"session_id": "   ", "cmd": "true"})

    # Nothing was created by any of the refused requests.
    assert await client.get_sessions() == []


# ── shutdown ─────────────────────────────────────────────────────────────


async def test_shutdown(langbot: LangBotLink, data_dir: Path) -> None:
    client = langbot.client
    assert (await client.execute(spec("ephemeral", "true"))).ok
    assert (await client.execute(spec("kept", "echo k > /workspace/k.txt", persistent=True))).ok
    assert len(sandboxes_of(langbot.backend, data_dir)) == 2

    await client.shutdown()  # box_shutdown; their client swallows errors, so check the effects
    with pytest.raises(BoxRuntimeUnavailableError):
        await client.get_status()  # their client drops its handler after shutdown

    # LangBot 0.5 semantics: non-persistent sessions are dropped, the daemon keeps serving.
    after = langbot.new_client()
    sessions = await after.get_sessions()
    assert [s["session_id"] for s in sessions] == ["kept"]
    assert len(sandboxes_of(langbot.backend, data_dir)) == 1
    assert (await after.execute(spec("kept", "cat /workspace/k.txt", persistent=True))).stdout == "k"
    fresh = await after.execute(spec("ephemeral", "echo new"))
    assert fresh.ok and fresh.stdout == "new"

    # And the raw payload is LangBot's: an empty object.
    assert await langbot.call(LangBotToBoxAction.SHUTDOWN, {}) == {}
    assert [s["session_id"] for s in await after.get_sessions()] == ["kept"]


# ── WebSocket only ───────────────────────────────────────────────────────


async def test_ws_session_survives_langbot_disconnect(
    anyio_backend: str, daemon: Daemon, data_dir: Path, langbot_cwd: Path
) -> None:
    async with over_websocket(daemon.url) as first:
        created = await first.client.create_session(spec("survivor"))
        wrote = await first.client.execute(spec("survivor", "echo persisted > /workspace/note.txt"))
        assert wrote.ok

    # LangBot is gone (its websocket closed); a new LangBot client connects.
    async with over_websocket(daemon.url) as second:
        sessions = await second.client.get_sessions()
        assert [s["session_id"] for s in sessions] == ["survivor"]
        info = await second.client.get_session("survivor")
        assert info["backend_session_id"] == created["backend_session_id"]
        read = await second.client.execute(spec("survivor", "cat /workspace/note.txt"))
        assert read.ok and read.stdout == "persisted"
    assert daemon.proc.poll() is None
    assert len(containers_of(data_dir)) == 1


async def test_ws_with_control_token(
    anyio_backend: str, docker_engine: docker.DockerClient, data_dir: Path, langbot_cwd: Path
) -> None:
    token = secrets.token_urlsafe(32)
    daemon = start_daemon(data_dir, "--backend", "docker", token=token)
    try:
        # No header: refused before the upgrade.
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(daemon.url, open_timeout=30, proxy=None):
                pass
        assert refused.value.response.status_code == 401

        # A wrong token: refused the same way.
        with pytest.raises(websockets.InvalidStatus) as wrong:
            async with websockets.connect(
                daemon.url,
                additional_headers={"X-LangBot-Box-Control-Token": secrets.token_urlsafe(32)},
                open_timeout=30,
                proxy=None,
            ):
                pass
        assert wrong.value.response.status_code == 401

        # LangBot's header: their WebSocketConnection + Handler + ActionRPCBoxClient work.
        headers = {"X-LangBot-Box-Control-Token": token}
        async with over_websocket_with_headers(daemon.url, headers) as link:
            await link.client.initialize()
            assert (await link.client.get_backend_info())["name"] == "docker"
            result = await link.client.execute(spec("tok", "echo $((6 * 7))"))
            assert result.ok and result.stdout == "42"
            assert [s["session_id"] for s in await link.client.get_sessions()] == ["tok"]
            await link.client.delete_session("tok")
            assert await link.client.get_sessions() == []
    finally:
        daemon.stop()
    assert containers_of(data_dir) == []


# ── stdio only ───────────────────────────────────────────────────────────


async def test_stdio_exits_on_stdin_eof_and_removes_every_container(
    anyio_backend: str, docker_engine: docker.DockerClient, data_dir: Path, langbot_cwd: Path
) -> None:
    async with over_stdio(data_dir, langbot_cwd) as link:
        assert link.process is not None
        assert (await link.client.execute(spec("plain", "true"))).ok
        # A persistent session survives box_shutdown, but not the daemon's exit.
        assert (await link.client.execute(spec("durable", "true", persistent=True))).ok
        await link.client.shutdown()
        assert len(containers_of(data_dir)) == 1
        assert link.process.returncode is None  # box_shutdown does not end the process
    assert link.exit_code == 0
    assert containers_of(data_dir) == []
