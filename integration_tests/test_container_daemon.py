"""Remote mode as a container: deploy/docker-compose.yml runs boxruntime/daemon:latest with the
engine socket and the data dir mounted at the same path; clients reach it over WebSocket with
the token, and every sandbox it makes is a sibling container on the host's engine.

The session stack comes from pytest-docker (fixtures in container_fixtures.py); the two tests
that stop or crash a daemon bring up a stack of their own.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import docker
import pytest
from docker.models.containers import Container
from pytest_docker.plugin import get_docker_services

from boxruntime.errors import BoxSessionNotFoundError
from boxruntime.models import BoxSpec
from integration_tests import container_fixtures
from integration_tests.container_fixtures import (
    COMPOSE_FILE,
    DAEMON_IMAGE,
    ComposeStack,
    ContainerDaemon,
    RemoteBox,
    daemon_container,
    healthz,
    open_peer,
    remote_box,
    wait_for_daemon,
)
from integration_tests.daemon import containers_of, free_port

# Fixtures: the containerised daemon, and pytest-docker's own pointed at deploy/. Bound here
# rather than in conftest.py so that they override pytest-docker's defaults in this module only.
daemon_image = container_fixtures.daemon_image
container_stack = container_fixtures.container_stack
container_daemon = container_fixtures.container_daemon
no_sandbox_left_behind = container_fixtures.no_sandbox_left_behind
docker_compose_file = container_fixtures.docker_compose_file
docker_compose_project_name = container_fixtures.docker_compose_project_name
docker_compose_command = container_fixtures.docker_compose_command
docker_setup = container_fixtures.docker_setup
docker_cleanup = container_fixtures.docker_cleanup

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.timeout(1200)]


def sandbox_of(docker_engine: docker.DockerClient, daemon: ContainerDaemon, hostname: str) -> Container:
    """The sandbox container whose hostname (its short id) a command inside it printed."""
    labels = ["boxruntime.managed=true", f"boxruntime.data_dir={daemon.data_dir}"]
    matches = [c for c in docker_engine.containers.list(filters={"label": labels}) if c.id.startswith(hostname)]
    assert len(matches) == 1, f"no sandbox of {daemon.data_dir} has the id {hostname}"
    container: Container = matches[0]
    return container


async def sandbox_running(
    box: RemoteBox, docker_engine: docker.DockerClient, daemon: ContainerDaemon, session: str
) -> Container:
    """The sandbox container of (persistent) ``session``, found by the hostname it reports.

    Not by its session label: a session may get a sandbox from the daemon's warm pool, made
    before the session existed.
    """
    result = await box.exec(BoxSpec(session_id=session, persistent=True, cmd="cat /etc/hostname"))
    return sandbox_of(docker_engine, daemon, result.stdout)


def daemon_pid(container: Container) -> int:
    """The host pid of the ``boxruntime serve`` process in the daemon's container."""
    top = container.top(ps_args="-eo pid,args")
    pids = [int(row[0]) for row in top["Processes"] if "bin/boxruntime serve" in row[1]]
    assert len(pids) == 1, top
    return pids[0]


def test_compose_runs_the_image_as_deployed(
    container_daemon: ContainerDaemon, docker_engine: docker.DockerClient
) -> None:
    container = docker_engine.containers.get(container_daemon.container_id)
    attrs = container.attrs
    assert attrs["Config"]["Image"] == DAEMON_IMAGE
    binds = {m["Destination"]: m for m in attrs["Mounts"]}
    data_dir = str(container_daemon.data_dir)
    # The same-path rule: the daemon's data dir is the host's, at the host's path.
    assert binds[data_dir]["Type"] == "bind" and binds[data_dir]["Source"] == data_dir and binds[data_dir]["RW"]
    assert binds["/var/run/docker.sock"]["Source"] == "/var/run/docker.sock"
    assert f"BOXRUNTIME_DATA_DIR={data_dir}" in attrs["Config"]["Env"]
    published = attrs["NetworkSettings"]["Ports"]["5410/tcp"]
    assert [(p["HostIp"], int(p["HostPort"])) for p in published] == [("127.0.0.1", container_daemon.port)]
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert attrs["HostConfig"]["Init"] is True
    assert attrs["Config"]["Cmd"] == ["serve", "--host", "0.0.0.0"]
    body = healthz(container_daemon.http)
    assert body is not None and body["live"] is True


async def test_connections_without_the_token_get_401(container_daemon: ContainerDaemon) -> None:
    token = container_daemon.token
    async with aiohttp.ClientSession() as http:
        refused: list[dict[str, str]] = [
            {},  # LangBot 0.5 sends no headers at all
            {"Authorization": "Bearer " + "x" * 43},
            {"X-LangBot-Box-Control-Token": token[:-1]},
        ]
        for headers in refused:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(container_daemon.url, headers=headers)
            assert caught.value.status == 401, headers
        async with http.get(f"{container_daemon.http}/healthz") as health:
            assert health.status == 200  # open: the engine's healthcheck has no token
    # Both ways LangBot and our bridge present the token get through.
    for headers in ({"Authorization": f"Bearer {token}"}, {"X-LangBot-Box-Control-Token": token}):
        async with open_peer(container_daemon.url, headers) as peer:
            assert await peer.call("__ping", {}) == {}


async def test_session_runs_in_a_sibling_sandbox(
    container_daemon: ContainerDaemon, docker_engine: docker.DockerClient
) -> None:
    spec = BoxSpec(session_id="sibling", cmd="true")
    async with remote_box(container_daemon) as box:
        info = await box.create_session(spec)
        assert info.backend_name == "docker" and info.resolved_image == "boxruntime/sandbox:latest"

        who = await box.exec(spec.model_copy(update={"cmd": "id -u; id -g; cat /etc/hostname; ls /sys/class/net"}))
        uid, gid, hostname, interfaces = who.stdout.split("\n", 3)
        assert (who.exit_code, uid, gid, interfaces) == (0, "1000", "1000", "lo")
        # The sandbox is a container of the host's engine, beside the daemon's, not inside it.
        sandbox = sandbox_of(docker_engine, container_daemon, hostname)
        assert sandbox.id != container_daemon.container_id
        assert sandbox.attrs["HostConfig"]["NetworkMode"] == "none"

        wrote = await box.exec(spec.model_copy(update={"cmd": "echo 'made in the sandbox' > /workspace/note.txt"}))
        assert wrote.exit_code == 0, wrote.stderr
        again = await box.exec(spec.model_copy(update={"cmd": "cat /workspace/note.txt; ls -n /workspace"}))
        assert again.stdout.splitlines()[0] == "made in the sandbox"
        assert " 1000 1000 " in again.stdout
        # The private workspace lives in the data dir on the host, where the engine mounted it from.
        on_host = list(container_daemon.data_dir.glob("workspaces/*/files/note.txt"))
        assert [p.read_text() for p in on_host] == ["made in the sandbox\n"]

        assert "sibling" in [s.session_id for s in await box.list_sessions()]
        await box.delete_session("sibling")
        with pytest.raises(BoxSessionNotFoundError):
            await box.get_session("sibling")
    assert sandbox.name not in container_daemon.stack.sandboxes()
    assert not on_host[0].exists()


async def test_host_path_in_the_data_dir_is_shared_with_the_host(container_daemon: ContainerDaemon) -> None:
    shared = container_daemon.data_dir / "projects" / "shared"
    shared.mkdir(parents=True)
    os.chown(shared, 1000, 1000)
    (shared / "from-host.txt").write_text("written on the host\n")
    spec = BoxSpec(session_id="host-path", host_path=str(shared), cmd="true")
    async with remote_box(container_daemon) as box:
        result = await box.exec(spec.model_copy(update={"cmd": "cat from-host.txt; echo reply > from-sandbox.txt"}))
        assert (result.exit_code, result.stdout) == (0, "written on the host"), result.stderr
        await box.delete_session("host-path")
    assert (shared / "from-sandbox.txt").read_text() == "reply\n"
    assert (shared / "from-sandbox.txt").stat().st_uid == 1000


async def test_workspace_quota_is_enforced_by_the_kernel(container_daemon: ContainerDaemon) -> None:
    # No loop devices in the daemon's container: the quota is a tmpfs of that size.
    spec = BoxSpec(session_id="quota", workspace_quota_mb=8, cmd="true")
    async with remote_box(container_daemon) as box:
        info = await box.create_session(spec)
        assert info.workspace_quota_enforced is True, info.notes
        fits = await box.exec(spec.model_copy(update={"cmd": "head -c 4M /dev/zero > /workspace/fits && echo ok"}))
        assert fits.stdout == "ok"
        too_big = await box.exec(spec.model_copy(update={"cmd": "head -c 12M /dev/zero > /workspace/big"}))
        assert too_big.exit_code != 0 and "No space left on device" in too_big.stderr
        await box.delete_session("quota")


def test_the_engine_sees_the_image_healthcheck_pass(container_daemon: ContainerDaemon) -> None:
    """The image's HEALTHCHECK (python3 + /healthz, no token) turns the container healthy."""
    container = container_daemon.container()
    assert container.attrs["Config"]["Healthcheck"]["Test"][:2] == ["CMD", "python3"]
    deadline = time.monotonic() + 180  # the first check runs one interval (10 s) after the start
    while container.attrs["State"]["Health"]["Status"] == "starting" and time.monotonic() < deadline:
        time.sleep(0.5)
        container.reload()
    health = container.attrs["State"]["Health"]
    assert health["Status"] == "healthy", health["Log"]
    assert health["Log"][-1]["ExitCode"] == 0


async def test_stopping_the_stack_removes_its_sandboxes(
    daemon_image: str, docker_engine: docker.DockerClient, tmp_path: Path
) -> None:
    stack = ComposeStack.create(tmp_path, f"boxruntime-it-{os.getpid()}-down")
    try:
        with get_docker_services(stack.command(), str(COMPOSE_FILE), stack.project, ["up -d"], ["down -v"]) as services:
            daemon = wait_for_daemon(services, stack)
            async with remote_box(daemon) as box:
                sandboxes = [await sandbox_running(box, docker_engine, daemon, name) for name in ("kept", "also-kept")]
            # Sessions outlive the connection; the daemon removes them when it is stopped.
            assert {s.name for s in sandboxes} <= set(stack.sandboxes())
        # Every sandbox of the stack is gone: the sessions' and those of the warm pool.
        assert stack.sandboxes() == []
    finally:
        stack.remove_sandboxes()  # a failed run's leftovers; the assertions above judge


async def test_a_crashed_daemon_is_restarted_and_takes_over_its_sessions(
    daemon_image: str, docker_engine: docker.DockerClient, tmp_path: Path
) -> None:
    stack = ComposeStack.create(tmp_path, f"boxruntime-it-{os.getpid()}-crash")
    try:
        with get_docker_services(stack.command(), str(COMPOSE_FILE), stack.project, ["up -d"], ["down -v"]) as services:
            daemon = wait_for_daemon(services, stack)
            async with remote_box(daemon) as box:
                kept = await sandbox_running(box, docker_engine, daemon, "kept")
                await box.exec(BoxSpec(session_id="kept", persistent=True, cmd="echo before > note.txt"))
            dead_instance = kept.labels["boxruntime.instance"]
            # SIGKILL: no chance to clean up. tini exits with it, and the restart policy runs a
            # new daemon, which takes over the dead one's session (the same container, its
            # files) and removes the rest of what it left (its warm pool).
            os.kill(daemon_pid(daemon_container(stack.project)), signal.SIGKILL)
            restarted = wait_for_daemon(services, stack, min_restarts=1)
            assert containers_of(stack.data_dir, dead_instance) == [kept.name]
            async with remote_box(restarted) as box:
                assert [s.session_id for s in await box.list_sessions()] == ["kept"]
                result = await box.exec(
                    BoxSpec(session_id="kept", persistent=True, cmd="cat note.txt; cat /etc/hostname")
                )
                assert result.stdout.split() == ["before", kept.attrs["Config"]["Hostname"]]
                await box.delete_session("kept")
        assert stack.sandboxes() == []
    finally:
        stack.remove_sandboxes()  # a failed run's leftovers; the assertions above judge


def test_a_data_dir_at_another_path_is_refused_clearly(
    daemon_image: str, docker_engine: docker.DockerClient, tmp_path: Path
) -> None:
    """Bind sources are resolved by the engine on the host: a data dir mounted elsewhere would
    only fail at the first session. The daemon says so up front instead (readyz 503)."""
    host_dir = tmp_path / "elsewhere"
    host_dir.mkdir()
    port = free_port()
    container = docker_engine.containers.run(
        daemon_image,
        detach=True,
        environment={"BOXRUNTIME_TOKEN": "z" * 40, "BOXRUNTIME_POOL_SIZE": "0"},
        volumes={
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            str(host_dir): {"bind": "/var/lib/boxruntime", "mode": "rw"},
        },
        ports={"5410/tcp": ("127.0.0.1", port)},
        labels={"boxruntime.test": "wrong-path"},
    )
    try:
        deadline = time.monotonic() + 60
        body: dict[str, object] | None = None
        while time.monotonic() < deadline:
            body = healthz(f"http://127.0.0.1:{port}")
            if body is not None:
                break
            time.sleep(0.2)
        assert body is not None, container.logs().decode(errors="replace")[-2000:]
        with pytest.raises(urllib.error.HTTPError) as unready:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30)
        assert unready.value.code == 503
        reason = unready.value.read().decode()
        assert "not the host's at the same path" in reason and "-v /var/lib/boxruntime:/var/lib/boxruntime" in reason
    finally:
        container.remove(force=True)
