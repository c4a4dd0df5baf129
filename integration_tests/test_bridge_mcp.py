"""MCP in the box (langbot_bridge.mcp) with real daemons on Docker and nsjail and real MCP
servers: a small server written here on the mcp 2.x ``MCPServer`` API, and ``mcp-server-time``
from PyPI.

The sandbox image has python3 but neither pip nor network, so the servers' code is provided
the way an offline operator would: this venv's installed distributions of ``mcp-server-time``
(and everything it requires, pydantic-core's cp311 manylinux build included) and of ``pip``
are copied into a directory that each session mounts read-only with ``PYTHONPATH`` on it
(the host is CPython 3.11 x86_64 glibc, as the image is). The install path is exercised with a
wheel built here, installed by pip inside the sandbox from a mounted wheel directory.

Relay drops are real: the relay goes through a TCP proxy in front of the daemon, which cuts
every link (``drop``) and refuses new ones (``hold``) on demand.

The tests marked ``THROUGH_E2B`` also run on the e2b backend: the servers run in E2B sandboxes
on a second daemon that speaks E2B's API (integration_tests/e2b_cluster.py), their code copied in
from the mounted directory, their stdio carried by envd's process API.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from boxruntime.errors import (
    BoxManagedProcessConflictError,
    BoxManagedProcessNotFoundError,
    BoxValidationError,
)
from integration_tests.daemon import Daemon, daemon_env, eventually, sandboxes_of, start_daemon
from integration_tests.e2b_cluster import e2b_daemon
from integration_tests.mcp_site import (
    ENV,
    FAST_RELAY,
    TIME_SPEC,
    WHEELED_MODULE,
    WHEELED_PROJECT,
    WHEELS_MOUNT,
    build_mcp_root,
    fixture_spec,
    mounts,
)
from langbot_bridge import BoxService, Connector, RemoteTarget, SpawnTarget
from langbot_bridge.mcp import (
    BoxMcpServer,
    McpHub,
    McpInstall,
    McpRelayLostError,
    McpServerCrashedError,
    McpServerSpec,
    McpServerStoppedError,
    McpTimeoutError,
    McpTiming,
    RelayPolicy,
    RelayTransport,
)

pytestmark = [pytest.mark.anyio]


@pytest.fixture(scope="session")
def mcp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mcp_root(tmp_path_factory.mktemp("mcp-root"))


@pytest.fixture(params=["docker", "nsjail"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return str(request.param)


# The MCP tests that also run on the e2b backend (each of its sessions copies the ~3,400 files of
# the mounted site in): MCP itself, mcp-server-time from PyPI, and a relay that drops.
THROUGH_E2B = pytest.mark.parametrize("backend", ["docker", "nsjail", "e2b"], indirect=True)


@pytest.fixture
def box(backend: str, data_dir: Path, mcp_root: Path, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    if backend == "e2b":
        cluster = request.getfixturevalue("e2b_server")
        with e2b_daemon(cluster, data_dir, "--allow-mount-root", str(mcp_root)) as daemon:
            yield daemon
        return
    daemon = start_daemon(data_dir, "--backend", backend, "--allow-mount-root", str(mcp_root))
    try:
        yield daemon
    finally:
        daemon.stop()
        assert sandboxes_of(backend, data_dir) == []


@pytest.fixture
async def service(box: Daemon, mcp_root: Path) -> AsyncIterator[BoxService]:
    async with Connector(RemoteTarget(box.url)) as link:
        await link.wait_available(60)
        yield BoxService(link, allowed_mount_roots=[mcp_root])


def hub(service: BoxService, mcp_root: Path, **options: Any) -> McpHub:
    options.setdefault("relay_policy", FAST_RELAY)
    return McpHub(service, bot="tester", session_request=mounts(mcp_root), **options)


def text_of(result: Any) -> str:
    assert result.is_error is False, result
    return str(result.content[0].text)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    """Poll the daemon's state (there is no event for it) until ``check`` holds."""
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - another process's state offers nothing to await
            await anyio.sleep(0.1)


class RelayProxy:
    """A TCP proxy in front of the daemon: ``drop()`` cuts every open link at once; ``hold()``
    refuses new links until ``release()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.holding = False
        self.accepted = 0
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> RelayProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def drop(self) -> None:
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if self.holding:
            client.transport.abort()
            return
        self.accepted += 1
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        link = (client, upstream)
        self._links.add(link)
        try:
            await asyncio.gather(self._copy(client_reader, upstream), self._copy(upstream_reader, client))
        finally:
            self._links.discard(link)
            client.transport.abort()
            upstream.transport.abort()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError):
            writer.write_eof()


# ── the tests ────────────────────────────────────────────────────────────


@THROUGH_E2B
async def test_tools_resources_prompts_and_a_1mb_result(service: BoxService, mcp_root: Path) -> None:
    async with hub(service, mcp_root) as mcp:
        server = await mcp.start(fixture_spec())
        assert server.initialize_result is not None
        assert server.initialize_result.server_info.name == "boxmcp-fixture"
        assert server.process_id == "mcp-fixture" and server.session_id == "mcp-tester"
        tools = {tool.name for tool in await server.list_tools()}
        assert tools == {"echo", "big", "counter", "slow", "crash"}
        assert text_of(await server.call_tool("echo", {"text": "héllo\nbox"})) == "héllo\nbox"
        big = text_of(await server.call_tool("big", {"size": 1_000_000}))  # one ~2 MB relay message
        assert big == "x" * 1_000_000
        assert [r.uri for r in await server.list_resources()] == ["note://hello"]
        contents = (await server.read_resource("note://hello")).contents
        assert [getattr(c, "text", None) for c in contents] == ["hello from the box"]
        assert [p.name for p in await server.list_prompts()] == ["greet"]
        prompt = await server.get_prompt("greet", {"name": "Ann"})
        assert getattr(prompt.messages[0].content, "text", None) == "Say hello to Ann."
        info = await service.client.get_managed_process("mcp-tester", "mcp-fixture")
        assert (info.status.value, info.attached, info.command) == ("running", True, "python3")
    # Closing the hub stops its servers (the shared session stays).
    session = await service.client.get_session("mcp-tester")
    assert session.persistent is True and not session.managed_processes


@THROUGH_E2B
async def test_two_servers_share_one_session_including_mcp_server_time_from_pypi(
    service: BoxService, mcp_root: Path
) -> None:
    async with hub(service, mcp_root) as mcp:
        fixture = await mcp.start(fixture_spec())
        clock = await mcp.start(TIME_SPEC)
        assert clock.initialize_result is not None
        assert clock.initialize_result.server_info.name == "mcp-time"
        assert fixture.session_id == clock.session_id == "mcp-tester"
        tools = await mcp.list_tools()
        assert {tool.name for tool in tools["time"]} == {"get_current_time", "convert_time"}
        assert "counter" in {tool.name for tool in tools["fixture"]}
        now = json.loads(text_of(await mcp.call_tool("time", "get_current_time", {"timezone": "Asia/Tokyo"})))
        assert now["timezone"] == "Asia/Tokyo" and now["datetime"].endswith("+09:00")
        converted = await clock.call_tool(
            "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}
        )
        assert json.loads(text_of(converted))["target"]["timezone"] == "Europe/Paris"
        assert text_of(await mcp.call_tool("fixture", "echo", {"text": "both"})) == "both"
        session = await service.client.get_session("mcp-tester")
        assert session.managed_processes is not None
        assert sorted(session.managed_processes) == ["mcp-fixture", "mcp-time"]
        assert {p.status.value for p in session.managed_processes.values()} == {"running"}
        assert await clock.list_resources() == [] and await clock.list_prompts() == []


@THROUGH_E2B
async def test_a_dropped_relay_reconnects_without_restarting_the_server(
    box: Daemon, service: BoxService, mcp_root: Path
) -> None:
    async with RelayProxy(box.port) as proxy, hub(service, mcp_root, relay_base_url=proxy.url) as mcp:
        server = await mcp.start(fixture_spec())
        first = text_of(await server.call_tool("counter"))
        started = (await server.status()).started_at
        assert server.transport is not None and server.transport.links == 1
        transport = server.transport
        for drops in (1, 2):
            proxy.drop()
            await eventually(functools.partial(lambda n: transport.links > n, drops))
        second = text_of(await server.call_tool("counter"))
        assert first.startswith("count=1 ") and second.startswith("count=2 ")
        assert first.split()[1] == second.split()[1]  # the same pid: the process kept its state
        assert (await server.status()).started_at == started
        assert server.transport.reconnects == 2 and proxy.accepted == 3


async def test_a_relay_given_up_on_is_reported_and_the_hub_reconnects_later(
    box: Daemon, service: BoxService, mcp_root: Path
) -> None:
    impatient = RelayPolicy(backoff_initial=0.05, backoff_max=0.1, give_up_after=0.5)
    async with (
        RelayProxy(box.port) as proxy,
        hub(service, mcp_root, relay_base_url=proxy.url, relay_policy=impatient) as mcp,
    ):
        server = await mcp.start(fixture_spec())
        first = text_of(await server.call_tool("counter"))
        initialized = server.initialize_result
        proxy.holding = True
        proxy.drop()
        transport = server.transport
        assert transport is not None
        await eventually(lambda: transport.ended is not None)
        with pytest.raises(McpRelayLostError, match="which still runs"):
            await server.call_tool("counter")
        proxy.holding = False
        assert await mcp.start(fixture_spec()) is server and server.healthy  # reconnected, not restarted
        assert server.transport is not transport and server.initialize_result == initialized
        second = text_of(await server.call_tool("counter"))
        assert (first.split()[0], second.split()[0]) == ("count=1", "count=2") and first.split()[1] == second.split()[1]


async def test_a_reply_written_while_detached_is_replayed_on_reattach(
    box: Daemon, service: BoxService, mcp_root: Path
) -> None:
    async with RelayProxy(box.port) as proxy, hub(service, mcp_root, relay_base_url=proxy.url) as mcp:
        server = await mcp.start(fixture_spec())
        assert server.transport is not None
        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def call_slow() -> None:
                results.append(text_of(await server.call_tool("slow", {"seconds": 2, "tag": "late"})))

            tg.start_soon(call_slow)
            await until(lambda: _stderr_has(server, "slow late started"))  # the server has the request
            proxy.holding = True
            proxy.drop()
            # The reply is written while no client is attached: the daemon keeps it.
            await until(lambda: _pending_output(server))
            assert results == [] and not server.connected
            proxy.holding = False
        assert results == ["done late"]  # delivered from the daemon's replay after reattaching
        assert server.transport.reconnects >= 1
        assert text_of(await server.call_tool("echo", {"text": "after"})) == "after"


async def test_a_new_client_ignores_replies_meant_for_an_earlier_one(
    box: Daemon, service: BoxService, mcp_root: Path
) -> None:
    async with hub(service, mcp_root, stop_on_close=False) as first:
        started = (await (await first.start(fixture_spec())).status()).started_at
    # An earlier client asks for a slow answer with a plain integer id, then goes away.
    url = f"{box.http}/v1/sessions/mcp-tester/managed-process/mcp-fixture/ws"
    call = {"name": "slow", "arguments": {"seconds": 2, "tag": "old"}}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("mcp",)) as ws:
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}))
    async with hub(service, mcp_root) as second:
        server = await second.start(fixture_spec())
        assert server.reused and (await server.status()).started_at == started
        # This client's request 2 is in flight when the old reply to "2" arrives from the replay.
        assert text_of(await server.call_tool("slow", {"seconds": 4, "tag": "new"})) == "done new"
        assert server.transport is not None and server.transport.fence is not None
        assert server.transport.fence.dropped == 1


async def test_a_crash_is_reported_with_its_stderr_and_a_restart_recovers(service: BoxService, mcp_root: Path) -> None:
    async with hub(service, mcp_root) as mcp:
        server = await mcp.start(fixture_spec())
        assert text_of(await server.call_tool("counter")).startswith("count=1 ")
        assert text_of(await server.call_tool("counter")).startswith("count=2 ")
        first_start = (await server.status()).started_at
        with pytest.raises(McpServerCrashedError) as crashed:
            await server.call_tool("crash", {"code": 3})
        assert crashed.value.exit_code == 3 and crashed.value.server == "fixture"
        assert "fatal: crash requested with code 3" in crashed.value.stderr_preview
        assert "exited with code 3" in str(crashed.value) and "fatal: crash requested" in str(crashed.value)
        with pytest.raises(McpServerCrashedError):  # every later call says the same
            await server.call_tool("echo", {"text": "anyone?"})
        assert not server.healthy
        again = await mcp.start(fixture_spec())  # the hub starts a crashed server again
        assert again is server and server.healthy
        assert text_of(await server.call_tool("counter")).startswith("count=1 ")  # a new process
        assert (await server.status()).started_at > first_start


async def test_a_server_that_cannot_start_is_reported_and_not_left_running(service: BoxService, mcp_root: Path) -> None:
    async with hub(service, mcp_root, timing=McpTiming(startup_timeout=3)) as mcp:
        missing = McpServerSpec(name="missing", command="python3", args=["-m", "no_such_module"], env=ENV)
        with pytest.raises(McpServerCrashedError) as crashed:
            await mcp.start(missing)
        assert crashed.value.exit_code == 1 and "No module named no_such_module" in crashed.value.stderr_preview
        mute = McpServerSpec(name="mute", command="sleep", args=["3600"])  # never answers initialize
        with pytest.raises(McpTimeoutError, match="did not answer initialize within 3 s"):
            await mcp.start(mute)
        assert mcp.servers == {}
        with pytest.raises(BoxManagedProcessNotFoundError):  # stopped, not left running unseen
            await service.client.get_managed_process(mcp.session_id, "mcp-mute")


async def test_the_relay_is_refused_for_exited_and_stopped_processes(
    box: Daemon, service: BoxService, mcp_root: Path
) -> None:
    async with hub(service, mcp_root) as mcp:
        server = await mcp.start(fixture_spec())
        with pytest.raises(McpServerCrashedError):
            await server.call_tool("crash", {"code": 7})
        url = f"ws://127.0.0.1:{box.port}/v1/sessions/mcp-tester/managed-process/mcp-fixture/ws"
        exited = RelayTransport(url, policy=FAST_RELAY)
        async with exited as (read, _write):
            with pytest.raises(anyio.EndOfStream):
                await read.receive()  # HTTP 400: the stream ends with nothing in it
        assert isinstance(exited.ended, BoxManagedProcessConflictError) and "not running" in str(exited.ended)
        assert exited.links == 0

        assert await mcp.start(fixture_spec()) is server  # started again
        await service.stop_process("mcp-tester", "mcp-fixture")  # stopped behind the server's back
        stopped = RelayTransport(url, policy=FAST_RELAY)
        async with stopped as (read, _write):
            with pytest.raises(anyio.EndOfStream):
                await read.receive()
        assert isinstance(stopped.ended, BoxManagedProcessNotFoundError)
        async with aiohttp.ClientSession() as http, http.get(url.replace("ws://", "http://")) as refused:
            assert refused.status == 400
            assert (await refused.json())["error"]["code"] == "BoxManagedProcessNotFoundError"
        with pytest.raises(McpServerStoppedError, match="is gone"):
            await server.call_tool("echo", {"text": "stopped?"})


async def test_install_into_the_session_once_and_refuse_an_offline_index_install(
    service: BoxService, mcp_root: Path
) -> None:
    install = McpInstall(requirements=[WHEELED_PROJECT], find_links=WHEELS_MOUNT)
    spec = McpServerSpec(name="wheeled", command="python3", args=["-m", WHEELED_MODULE], env=ENV, install=install)
    async with hub(service, mcp_root) as mcp:
        server = await mcp.start(spec)
        assert server.installed is True
        assert server.initialize_result is not None
        assert server.initialize_result.server_info.name == "boxmcp-wheeled"
        assert text_of(await server.call_tool("echo", {"text": "installed"})) == "installed"
        site = "/workspace/.mcp/mcp-wheeled/site"
        where = await service.exec(mcp.session_id, f"ls {site}/{WHEELED_MODULE}.py", mcp.session_request)
        assert where.ok
        await mcp.stop("wheeled")
        again = await mcp.start(spec)
        assert again.installed is False and not again.reused  # a new process, no second pip run

        offline = McpServerSpec.model_validate(
            {"name": "clock", "command": "mcp-server-time", "install": "mcp-server-time"}
        )
        with pytest.raises(BoxValidationError, match=r"needs network access.*network off"):
            await mcp.start(offline)
        assert "clock" not in mcp.servers


async def test_a_stdio_daemon_serves_mcp_through_its_own_relay_token(
    backend: str, data_dir: Path, mcp_root: Path
) -> None:
    target = SpawnTarget(
        args=("--backend", backend, "--allow-mount-root", str(mcp_root)),
        env=daemon_env(data_dir),
    )
    async with Connector(target) as link:
        await link.wait_available(60)
        relay = await BoxService(link).client.relay_info()
        assert relay.base_url is not None and relay.token is not None
        service = BoxService(link, allowed_mount_roots=[mcp_root])
        async with (
            hub(service, mcp_root) as mcp,
            BoxMcpServer(
                service, mcp.session_id, TIME_SPEC, session_request=mounts(mcp_root), stop_on_close=True
            ) as clock,
        ):
            now = json.loads(text_of(await clock.call_tool("get_current_time", {"timezone": "UTC"})))
            assert now["timezone"] == "UTC"
    assert sandboxes_of(backend, data_dir) == []


# ── helpers over the daemon's state ──────────────────────────────────────


async def _stderr_has(server: BoxMcpServer, text: str) -> bool:
    return text in (await server.status()).stderr_preview


async def _pending_output(server: BoxMcpServer) -> bool:
    info = await server.status()
    return not info.attached and info.pending_output_bytes > 0
