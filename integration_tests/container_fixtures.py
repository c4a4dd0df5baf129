"""The daemon as a container: deploy/docker-compose.yml, brought up with pytest-docker.

These fixtures override pytest-docker's defaults, so they are not in conftest.py: a test
module that wants the containerised daemon imports them explicitly.

The image is built (or found up to date) by deploy/build-daemon-image.sh at the start of the
session. Each stack gets its own compose project, data dir, token and port, and its variables
come from an env file, so the caller's own BOXRUNTIME_* settings never leak into it. Sandboxes
are found by the labels the daemon puts on them (``boxruntime.data_dir=<the stack's data
dir>``), which no other daemon on the engine shares.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import docker
import docker.errors
import pytest
from docker.models.containers import Container
from pytest_docker.plugin import Services

from boxruntime.models import BoxSpec, ExecResult, SessionIdRequest, SessionInfo
from boxruntime.protocol import Peer, WebSocketConnection
from integration_tests.daemon import ROOT, containers_of, free_port

COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
BUILD_SCRIPT = ROOT / "deploy" / "build-daemon-image.sh"
DAEMON_IMAGE = "boxruntime/daemon:latest"
SERVICE = "boxruntime"
SERVICE_PORT = 5410
# The variables deploy/docker-compose.yml reads. Compose prefers the shell's values over the
# env file's, so the compose command runs with these unset.
COMPOSE_VARIABLES = (
    "BOXRUNTIME_DAEMON_IMAGE",
    "BOXRUNTIME_TOKEN",
    "BOXRUNTIME_DATA_DIR",
    "BOXRUNTIME_PUBLISH_ADDR",
    "BOXRUNTIME_PUBLISH_PORT",
    "DOCKER_SOCKET",
)
START_TIMEOUT = 120.0
CALL_TIMEOUT = 180.0


@cache
def compose_cli() -> str:
    """``docker compose`` (v2) where the plugin exists, else ``docker-compose`` (v1)."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if v2.returncode == 0:
        return "docker compose"
    if shutil.which("docker-compose"):
        return "docker-compose"
    pytest.fail("neither `docker compose` nor `docker-compose` is installed: apt-get install -y docker-compose")


@dataclass(frozen=True)
class ComposeStack:
    """One deployment of deploy/docker-compose.yml with its own project, data dir, token, port."""

    project: str
    data_dir: Path
    token: str
    port: int
    env_file: Path

    @classmethod
    def create(cls, workdir: Path, project: str) -> ComposeStack:
        # The data dir is mounted at its own absolute path, so it must be the real one.
        data_dir = (workdir / "data").resolve()
        data_dir.mkdir(parents=True)
        token = secrets.token_urlsafe(32)
        port = free_port()
        env_file = workdir / "compose.env"
        env_file.touch(mode=0o600)
        env_file.write_text(
            f"BOXRUNTIME_DAEMON_IMAGE={DAEMON_IMAGE}\n"
            f"BOXRUNTIME_TOKEN={token}\n"
            f"BOXRUNTIME_DATA_DIR={data_dir}\n"
            "BOXRUNTIME_PUBLISH_ADDR=127.0.0.1\n"
            f"BOXRUNTIME_PUBLISH_PORT={port}\n"
        )
        return cls(project, data_dir, token, port, env_file)

    def command(self) -> str:
        """The compose command line (pytest-docker runs it through a shell)."""
        unset = " ".join(f"-u {name}" for name in COMPOSE_VARIABLES)
        return f"env {unset} {compose_cli()} --env-file {shlex.quote(str(self.env_file))}"

    def sandboxes(self) -> list[str]:
        return containers_of(self.data_dir)

    def remove_sandboxes(self) -> list[str]:
        """Force-remove this stack's sandboxes (a failed test's leftovers); returns their names."""
        names = self.sandboxes()
        client = docker.from_env()
        try:
            for name in names:
                with contextlib.suppress(docker.errors.NotFound):
                    client.containers.get(name).remove(force=True)
        finally:
            client.close()
        return names


@dataclass(frozen=True)
class ContainerDaemon:
    """The daemon of a running stack, as a client sees it."""

    stack: ComposeStack
    port: int  # the published port, as the engine reports it
    container_id: str
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.stack.data_dir

    @property
    def token(self) -> str:
        return self.stack.token

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/rpc/ws"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def container(self) -> Container:
        client = docker.from_env()
        try:
            return client.containers.get(self.container_id)
        finally:
            client.close()

    def logs(self) -> str:
        try:
            raw: bytes = self.container().logs(tail=60)
        except docker.errors.NotFound:
            return "(container gone)"
        return raw.decode(errors="replace")


def healthz(base_url: str) -> dict[str, Any] | None:
    """The daemon's /healthz body, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=3) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except (OSError, urllib.error.URLError, ValueError):
        return None


def daemon_container(project: str) -> Container:
    """The stack's daemon container, by the labels both compose versions set."""
    client = docker.from_env()
    try:
        labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={SERVICE}"]
        found = client.containers.list(all=True, filters={"label": labels})
    finally:
        client.close()
    assert len(found) == 1, f"expected one {SERVICE} container in project {project}, found {found}"
    container: Container = found[0]
    return container


def wait_for_daemon(services: Services, stack: ComposeStack, min_restarts: int = 0) -> ContainerDaemon:
    """Wait until the stack's daemon answers /healthz on its published port.

    ``min_restarts``: wait for the daemon the engine restarted that many times (restart policy),
    not for the one that died.
    """
    port = services.port_for(SERVICE, SERVICE_PORT)
    daemon = ContainerDaemon(stack, port, daemon_container(stack.project).id)

    def up() -> bool:
        container = daemon.container()
        restarted = int(container.attrs["RestartCount"]) >= min_restarts
        return restarted and container.status == "running" and healthz(daemon.http) is not None

    try:
        services.wait_until_responsive(check=up, timeout=START_TIMEOUT, pause=0.25)
    except Exception as exc:
        raise AssertionError(f"daemon did not answer /healthz on {daemon.http}:\n{daemon.logs()}") from exc
    return daemon


def build_daemon_image() -> str:
    """Run deploy/build-daemon-image.sh: builds the image, or finds it up to date."""
    # The image names are the script's defaults, which are what deploy/docker-compose.yml runs.
    env = {k: v for k, v in os.environ.items() if k not in ("BOXRUNTIME_DAEMON_IMAGE", "BOXRUNTIME_SANDBOX_IMAGE")}
    result = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{BUILD_SCRIPT} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return DAEMON_IMAGE


# ── the client the tests drive the daemon with ───────────────────────────


class RemoteBox:
    """The daemon's actions as the tests call them: BoxSpec in, SessionInfo/ExecResult out.

    The names and types are langbot_bridge.client.BoxClient's, so moving these tests onto the
    bridge is a change to ``remote_box`` alone (see there); the tests stay as they are.
    """

    def __init__(self, peer: Peer) -> None:
        self.caller = peer

    async def ping(self) -> None:
        await self.caller.call("__ping", {})

    async def create_session(self, spec: BoxSpec) -> SessionInfo:
        data = await self.caller.call("box_create_session", spec.model_dump(mode="json"), CALL_TIMEOUT)
        return SessionInfo.model_validate(data)

    async def exec(self, spec: BoxSpec) -> ExecResult:
        data = await self.caller.call("box_exec", spec.model_dump(mode="json"), CALL_TIMEOUT)
        return ExecResult.model_validate(data)

    async def get_session(self, session_id: str) -> SessionInfo:
        ref = SessionIdRequest(session_id=session_id).model_dump(mode="json")
        return SessionInfo.model_validate(await self.caller.call("box_get_session", ref))

    async def list_sessions(self) -> list[SessionInfo]:
        data = await self.caller.call("box_get_sessions", {})
        return [SessionInfo.model_validate(item) for item in data["sessions"]]

    async def delete_session(self, session_id: str) -> None:
        ref = SessionIdRequest(session_id=session_id).model_dump(mode="json")
        await self.caller.call("box_delete_session", ref, CALL_TIMEOUT)


@contextlib.asynccontextmanager
async def open_peer(url: str, headers: dict[str, str]) -> AsyncIterator[Peer]:
    """Our own Peer over a real WebSocket, upgraded with ``headers``."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers=headers, max_msg_size=16 << 20) as ws,
    ):
        peer = Peer(WebSocketConnection(ws), name="container-test-client")
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.run)
            try:
                yield peer
            finally:
                tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def remote_box(daemon: ContainerDaemon) -> AsyncIterator[RemoteBox]:
    """A client of the containerised daemon over a real WebSocket, with the stack's token.

    To drive it with langbot_bridge instead, this body becomes:

        async with Connector(RemoteTarget(daemon.url, daemon.token)) as connector:
            connector.require()
            yield BoxClient(connector)
    """
    async with open_peer(daemon.url, daemon.headers()) as peer:
        yield RemoteBox(peer)


# ── fixtures: pytest-docker's, pointed at deploy/docker-compose.yml ──────


@pytest.fixture(scope="session")
def daemon_image(docker_engine: docker.DockerClient) -> str:
    """boxruntime/daemon:latest, built from this checkout unless already up to date."""
    return build_daemon_image()


@pytest.fixture(scope="session")
def container_stack(tmp_path_factory: pytest.TempPathFactory) -> ComposeStack:
    return ComposeStack.create(tmp_path_factory.mktemp("compose"), f"boxruntime-it-{os.getpid()}")


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name(container_stack: ComposeStack) -> str:
    return container_stack.project


@pytest.fixture(scope="session")
def docker_compose_command(container_stack: ComposeStack) -> str:
    return container_stack.command()


@pytest.fixture(scope="session")
def docker_setup(daemon_image: str) -> list[str]:
    # Compose v1 has no `up --wait`; container_daemon waits for /healthz itself.
    return ["up -d"]


@pytest.fixture(scope="session")
def docker_cleanup(no_sandbox_left_behind: None) -> list[str]:
    # Depending on the guard makes it tear down after `down`, which is what it checks.
    return ["down -v"]


@pytest.fixture(scope="session")
def no_sandbox_left_behind(container_stack: ComposeStack) -> Iterator[None]:
    """After `compose down`, no sandbox of the stack's daemon may exist on the engine."""
    yield
    leftovers = container_stack.remove_sandboxes()
    assert leftovers == [], f"the containerised daemon left sandboxes behind: {leftovers}"


@pytest.fixture(scope="session")
def container_daemon(docker_services: Services, container_stack: ComposeStack) -> ContainerDaemon:
    return wait_for_daemon(docker_services, container_stack)
