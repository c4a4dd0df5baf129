"""``langbot_bridge.Sandbox`` against real daemons: commands, files, processes, reconnecting by
id, background commands, and MCP servers whose packages come from this host."""

from __future__ import annotations

import os
import zipfile
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import distribution
from pathlib import Path

import anyio
import pytest

from boxruntime.errors import BoxSessionNotFoundError, BoxValidationError
from integration_tests.daemon import Daemon, sandboxes_of, start_daemon
from integration_tests.mcp_site import FIXTURE_SERVER, WHEELED_MODULE, WHEELED_PROJECT, build_wheel, copy_distributions
from langbot_bridge import BoxService, CommandExitError, Connector, RemoteTarget, Sandbox
from langbot_bridge.mcp import McpInstall

pytestmark = [pytest.mark.anyio]


@pytest.fixture(params=["docker", "nsjail"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return str(request.param)


@pytest.fixture
def box(backend: str, data_dir: Path) -> Iterator[Daemon]:
    daemon = start_daemon(data_dir, "--backend", backend)
    try:
        yield daemon
    finally:
        daemon.stop()
        assert sandboxes_of(backend, data_dir) == []


@pytest.fixture
async def link(box: Daemon) -> AsyncIterator[Connector]:
    """A second client of the same daemon, to look at sandboxes from outside."""
    async with Connector(RemoteTarget(box.url)) as connector:
        await connector.wait_available(60)
        yield connector


async def test_commands_and_files_are_exact(box: Daemon) -> None:
    async with Sandbox(endpoint=box.url, env={"GREETING": "hi"}) as sbx:
        await sbx.files.write("dir/hello.py", "print('hello from the box')\n")
        result = await sbx.commands.run("python3 dir/hello.py")
        assert (result.exit_code, result.stdout, result.stderr) == (0, "hello from the box\n", "")
        assert await sbx.files.read("dir/hello.py") == "print('hello from the box')\n"
        blob = os.urandom(9 * 1024 * 1024)  # more than one call carries, with NUL bytes
        await sbx.files.write("/tmp/blob", blob, mode=0o600)
        assert await sbx.files.read_bytes("/tmp/blob") == blob
        stat = await sbx.files.stat("/tmp/blob")
        assert (stat.type, stat.size, stat.mode & 0o777) == ("file", len(blob), 0o600)
        assert [e.name for e in await sbx.files.list("dir")] == ["hello.py"]
        await sbx.files.remove("dir", recursive=True)
        assert not await sbx.files.exists("dir")

        env = await sbx.commands.run(["sh", "-c", 'echo "$GREETING $EXTRA $PWD"'], env={"EXTRA": "x"}, cwd="/tmp")
        assert env.stdout == "hi x /tmp\n"
        seen: list[str] = []
        streamed = await sbx.commands.run("echo one; echo two >&2; exit 3", on_stdout=seen.append)
        assert (streamed.exit_code, streamed.ok, "".join(seen), streamed.stderr) == (3, False, "one\n", "two\n")
        with pytest.raises(CommandExitError, match="exited with 3"):
            await sbx.commands.run("exit 3", check=True)
        fed = await sbx.commands.run("tr a-z A-Z", stdin="shout\n")
        assert fed.stdout == "SHOUT\n"
        missing = await sbx.commands.run("nosuchcmd")
        assert (missing.exit_code, missing.stderr) == (127, "sh: 1: nosuchcmd: not found\n")
        slow = await sbx.commands.run("sleep 30", timeout=1)
        assert slow.timed_out and slow.exit_code is None
        with pytest.raises(BoxValidationError, match="above the default profile's limit of 120 s"):
            await sbx.commands.run("true", timeout=1000)


async def test_background_commands_take_input_and_can_be_killed(box: Daemon) -> None:
    async with Sandbox(endpoint=box.url) as sbx:
        reader = await sbx.commands.run("read name; echo hello $name; cat", background=True)
        await reader.send_stdin("box\n")
        await reader.send_stdin(b"rest\n")
        await reader.close_stdin()
        done = await reader.wait()
        assert (done.exit_code, done.stdout) == (0, "hello box\nrest\n")

        lines: list[str] = []
        ticker = await sbx.commands.run("echo started; sleep 60", background=True, on_stdout=lines.append)
        with anyio.fail_after(30):
            while "started\n" not in "".join(lines):  # noqa: ASYNC110 - output arrives by callback
                await anyio.sleep(0.05)
        killed = await ticker.kill()
        assert ticker.finished and killed is not None
        assert (killed.signal, killed.exit_code, killed.end_reason.value) == (9, 137, "cancelled")
        assert await ticker.wait() == killed
        # Its whole process group went with it: no sleep is left in the sandbox.
        left = await sbx.commands.run("grep -sx sleep /proc/[0-9]*/comm | wc -l")
        assert left.stdout.strip() == "0"


async def test_file_calls_work_before_the_session_exists(box: Daemon, link: Connector) -> None:
    service = BoxService(link)
    await service.files.write("fresh", "notes.txt", "first")  # no session yet: created on the way
    assert await service.files.read_text("fresh", "notes.txt") == "first"
    async with Sandbox(endpoint=box.url) as sbx:
        await service.delete_session(sbx.sandbox_id)  # gone behind its back
        await sbx.files.write("again.txt", b"still works")
        assert await sbx.files.read("again.txt") == "still works"
    await service.delete_session("fresh")


async def test_reconnect_by_id_and_what_leaving_does(box: Daemon, link: Connector) -> None:
    service = BoxService(link)
    kept = await Sandbox.create("kept-one", endpoint=box.url, persistent=True, network="off")
    await kept.files.write("state.txt", "saved")
    process = await kept.processes.start("sleep", ["300"], process_id="sleeper")
    await kept.close()  # the object goes, the sandbox stays
    assert "kept-one" in [s.session_id for s in await service.sessions()]

    async with await Sandbox.connect("kept-one", endpoint=box.url) as again:
        assert again.info is not None and again.info.persistent
        assert await again.files.read("state.txt") == "saved"
        assert (await again.processes.get(process.process_id)).status.value == "running"
        assert list(await again.processes.list()) == ["sleeper"]
        await again.processes.stop("sleeper")
    assert "kept-one" in [s.session_id for s in await service.sessions()]  # connect never removes

    gone = await Sandbox.connect("kept-one", endpoint=box.url)
    await gone.kill()
    with pytest.raises(BoxSessionNotFoundError):
        await Sandbox.connect("kept-one", endpoint=box.url)

    async with Sandbox(endpoint=box.url) as temporary:
        await temporary.commands.run("true")
        name = temporary.sandbox_id
    assert name not in [s.session_id for s in await service.sessions()]  # created here, removed on exit


# ── MCP servers in the box ──────────────────────────────────────────────


def installed_wheel(name: str, directory: Path) -> Path:
    """A wheel of an installed distribution, zipped from its installed files (RECORD included)."""
    dist = distribution(name)
    wheel = directory / f"{name}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for file in dist.files or []:
            if file.parts[0] != ".." and "__pycache__" not in file.parts:
                archive.write(str(dist.locate_file(file)), str(file))
    return wheel


@pytest.fixture(scope="session")
def mcp_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `pip install --target DIR mcp-server-time` gives, copied from this venv."""
    site = tmp_path_factory.mktemp("mcp-packages")
    copy_distributions(["mcp-server-time"], site)
    return site


async def test_mcp_server_with_packages_from_the_host(
    docker_engine: object, data_dir: Path, mcp_packages: Path
) -> None:
    daemon = start_daemon(data_dir, "--backend", "docker")
    try:
        async with Sandbox("mcp-box", endpoint=daemon.url, persistent=True) as sbx:
            server = await sbx.mcp.start(
                "time", "python3", ["-m", "mcp_server_time", "--local-timezone", "UTC"], packages=mcp_packages
            )
            assert {tool.name for tool in await server.list_tools()} == {"get_current_time", "convert_time"}
            answer = await server.call_tool("get_current_time", {"timezone": "UTC"})
            assert answer.is_error is False and '"timezone": "UTC"' in answer.content[0].text  # type: ignore[union-attr]
        # A reconnected sandbox finds the server still running and reuses it (nothing copied again).
        async with await Sandbox.connect("mcp-box", endpoint=daemon.url, kill_on_exit=True) as again:
            reused = await again.mcp.start(
                "time", "python3", ["-m", "mcp_server_time", "--local-timezone", "UTC"], packages=mcp_packages
            )
            assert reused.reused
            assert len(await reused.list_tools()) == 2
    finally:
        daemon.stop()
        assert sandboxes_of("docker", data_dir) == []


async def test_mcp_server_installed_inside_from_host_wheels(
    docker_engine: object, data_dir: Path, tmp_path: Path
) -> None:
    site, wheels = tmp_path / "site", tmp_path / "wheels"
    site.mkdir()
    wheels.mkdir()
    copy_distributions(["mcp"], site)  # what the server imports
    build_wheel(wheels, WHEELED_PROJECT, WHEELED_MODULE, FIXTURE_SERVER)  # the server, as a wheel
    pip = installed_wheel("pip", wheels)  # the sandbox image has no pip: it runs from its wheel
    daemon = start_daemon(data_dir, "--backend", "docker", "--allow-mount-root", str(tmp_path))
    try:
        # The wheels copied in (any daemon), or mounted from this host (a daemon that allows it).
        async with Sandbox(endpoint=daemon.url, mounts={wheels: "/opt/wheels"}) as sbx:  # network off
            server = await sbx.mcp.start(
                "wheeled", "python3", ["-m", WHEELED_MODULE], packages=site, install=[WHEELED_PROJECT], wheels=wheels
            )
            assert server.installed
            echoed = await server.call_tool("echo", {"text": "from a wheel"})
            assert echoed.content[0].text == "from a wheel"  # type: ignore[union-attr]
            mounted_install = McpInstall(
                requirements=[WHEELED_PROJECT],
                find_links="/opt/wheels",
                pip=["python3", f"/opt/wheels/{pip.name}/pip"],
                target="/workspace/.mounted-site",
            )
            mounted = await sbx.mcp.start(
                "mounted", "python3", ["-m", WHEELED_MODULE], packages=site, install=mounted_install
            )
            assert mounted.installed
            assert (await mounted.call_tool("echo", {"text": "mounted"})).content[0].text == "mounted"  # type: ignore[union-attr]
            with pytest.raises(BoxValidationError, match="name them with install"):
                await sbx.mcp.start("bad", "python3", wheels=wheels)
    finally:
        daemon.stop()
        assert sandboxes_of("docker", data_dir) == []
