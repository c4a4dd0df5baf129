"""Images without python3: commands go through the Engine API instead of the agent."""

from __future__ import annotations

from typing import Any

import docker
import pytest

from boxruntime.errors import BoxSandboxError, BoxValidationError
from boxruntime.models import DEFAULT_IMAGE
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

NO_PYTHON_IMAGE = "boxruntime/test-no-python:latest"


@pytest.fixture(scope="session")
def no_python_image(docker_engine: docker.DockerClient) -> str:
    """The sandbox image minus python3, made locally (no registry needed)."""
    try:
        docker_engine.images.get(NO_PYTHON_IMAGE)
        return NO_PYTHON_IMAGE
    except docker.errors.ImageNotFound:
        pass
    container = docker_engine.containers.run(
        DEFAULT_IMAGE, ["sh", "-c", "rm -f /usr/bin/python3*"], user="0", detach=True
    )
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0
        repository, tag = NO_PYTHON_IMAGE.split(":")
        container.commit(repository=repository, tag=tag, changes=['CMD ["sh"]'])
    finally:
        container.remove(force=True)
    return NO_PYTHON_IMAGE


async def run(peer: Peer, cmd: str, **spec: Any) -> dict[str, Any]:
    return await peer.call("box_exec", {"session_id": "np", "cmd": cmd, "image": NO_PYTHON_IMAGE, **spec}, timeout=120)


async def test_exec_falls_back_to_the_engine_api(daemon: Daemon, no_python_image: str) -> None:
    async with connect(daemon) as peer:
        first = await run(peer, "command -v python3 || echo none; echo err >&2; exit 4", env={"K": "v"})
        assert (first["stdout"], first["stderr"], first["exit_code"]) == ("none", "err", 4)
        assert first["cpu_ms"] is None and first["peak_rss_kb"] is None
        info = await peer.call("box_get_session", {"session_id": "np"})
        assert any("has no python3" in note for note in info["notes"])
        assert (await run(peer, 'echo "$K" $(id -u)', env={"K": "v"}))["stdout"] == "v 1000"
        sub = await run(peer, "pwd; echo x > f", workdir="/workspace/sub")
        assert sub["stdout"] == "/workspace/sub"
        assert (await run(peer, "cat sub/f"))["stdout"] == "x"
        with pytest.raises(BoxValidationError, match="workdir /usr/nope cannot be created"):
            await run(peer, "touch /tmp/ran", workdir="/usr/nope")
        assert (await run(peer, "ls /tmp"))["stdout"] == ""
        big = await run(peer, "head -c 2000000 /dev/zero | tr '\\0' z")
        assert big["stdout_bytes"] == 2000000 and big["stdout"].startswith("z" * 1000)
        assert "raw output clipped at 1048576 bytes" in big["stdout"]


async def test_timeouts_kill_the_command_and_keep_the_session(daemon: Daemon, no_python_image: str) -> None:
    async with connect(daemon) as peer:
        await run(peer, "echo kept > k")
        slow = await run(peer, "sleep 30 & sleep 30", timeout_sec=2)
        assert slow["status"] == "timed_out" and slow["exit_code"] is None
        after = await run(peer, "cat k; cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
        assert after["stdout"].startswith("kept") and "sleep 30" not in after["stdout"]


async def test_what_needs_the_agent_says_so(daemon: Daemon, no_python_image: str) -> None:
    async with connect(daemon) as peer:
        await run(peer, "true")
        with pytest.raises(BoxSandboxError, match=r"needs? python3"):
            await peer.call("box_fs_read", {"session_id": "np", "path": "x"})
        with pytest.raises(BoxSandboxError, match=r"needs? python3"):
            await peer.call("box_start_managed_process", {"session_id": "np", "spec": {"command": "cat"}})
