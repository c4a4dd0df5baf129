"""Fixtures for tests against the real Docker engine and real daemon processes.

These tests never skip: CI (``./dev test``) installs and starts Docker and builds the image
first, so a missing engine is a failure to report, not a reason to pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from boxruntime.models import DEFAULT_IMAGE
from integration_tests.daemon import Daemon, containers_of, start_daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        pytest.fail(f"Docker engine not reachable ({exc}); run the suite with ./dev test")
    try:
        client.images.get(DEFAULT_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{DEFAULT_IMAGE} missing; ./dev test builds it (boxruntime image build)")
    yield client
    client.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def daemon(docker_engine: docker.DockerClient, data_dir: Path) -> Iterator[Daemon]:
    """A WebSocket daemon on the Docker backend; on teardown it must leave no container."""
    proc = start_daemon(data_dir, "--backend", "docker")
    proc.extra["backend"] = "docker"
    try:
        yield proc
    finally:
        proc.stop()
        leftovers = containers_of(data_dir)
        assert leftovers == [], f"daemon left containers behind: {leftovers}"


@pytest.fixture
def gvisor_daemon(docker_engine: docker.DockerClient, data_dir: Path) -> Iterator[Daemon]:
    """A WebSocket daemon on the gvisor backend (Docker with runsc, registered by ./dev)."""
    proc = start_daemon(data_dir, "--backend", "gvisor")
    proc.extra["backend"] = "gvisor"
    try:
        yield proc
    finally:
        proc.stop()
        leftovers = containers_of(data_dir)
        assert leftovers == [], f"daemon left containers behind: {leftovers}"


@pytest.fixture(params=["docker", "gvisor"])
def container_daemon(request: pytest.FixtureRequest) -> Daemon:
    """The same test on both container runtimes: runc (docker) and runsc (gvisor)."""
    daemon: Daemon = request.getfixturevalue("daemon" if request.param == "docker" else "gvisor_daemon")
    return daemon


@pytest.fixture
def nsjail_daemon(data_dir: Path) -> Iterator[Daemon]:
    """A WebSocket daemon on the nsjail backend; on teardown no jail may be left running."""
    from integration_tests.daemon import jails_of

    proc = start_daemon(data_dir, "--backend", "nsjail")
    try:
        yield proc
    finally:
        proc.stop()
        assert jails_of(data_dir) == [], "daemon left jails behind"
