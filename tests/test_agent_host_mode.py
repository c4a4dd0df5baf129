"""The agent as the host backend runs it (``--host``): a plain process on the host, subreaper
of its commands' trees, and the one that takes them all down when it stops. Also the graced
timeout kill (SIGTERM, then SIGKILL) that the host backend asks for."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from boxruntime.backends.agent.backend import AGENT_SOURCES
from boxruntime.backends.agent.client import AgentClient
from boxruntime.backends.agent.commands import CommandRequest
from tests.test_agent import parent_of, pids_alive

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def host_agent(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    directory = tmp_path / "agent"
    directory.mkdir()
    # A relative socket name, as the host backend uses (its directory's path may be long).
    proc = subprocess.Popen(
        [sys.executable, str(AGENT_SOURCES / "boxagent.py"), "--host", "agent.sock"],
        cwd=directory,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
async def client(host_agent: subprocess.Popen[bytes], tmp_path: Path) -> AsyncIterator[AgentClient]:
    agent = AgentClient(tmp_path / "agent", "host-test")
    await agent.connect(timeout=30)
    try:
        yield agent
    finally:
        await agent.close()


def cmd(script: str, **fields: object) -> CommandRequest:
    return CommandRequest(cwd="/tmp", env={"PATH": "/usr/bin:/bin"}, script=script, **fields)  # type: ignore[arg-type]


async def gone(marker: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while pids_alive(marker) and time.monotonic() < deadline:  # noqa: ASYNC110 - other processes' state
        await asyncio.sleep(0.05)
    return not pids_alive(marker)


async def test_a_graced_timeout_sends_sigterm_first_then_kills_what_resists(client: AgentClient) -> None:
    marker = f"sleep 6{os.getpid() % 1000}1"
    # The command itself catches SIGTERM and goes on waiting; its child ignores SIGTERM.
    script = f"trap 'echo got-term' TERM; sh -c \"trap '' TERM; exec {marker}\" & wait; wait"
    done = await client.run(cmd(script, timeout=1, kill_grace=1))
    assert done.exit.reason == "timeout"
    assert done.stdout == b"got-term\n"  # SIGTERM came first, and was seen
    assert await gone(marker)

    # The command dies of SIGTERM, but a child that ignores it still holds the group: it is
    # killed after the grace, and the result comes only then.
    marker = f"sleep 6{os.getpid() % 1000}2"
    done = await client.run(cmd(f"sh -c \"trap '' TERM; exec {marker}\" & wait", timeout=1, kill_grace=1))
    assert (done.exit.reason, done.exit.signal) == ("timeout", signal.SIGTERM)
    assert await gone(marker)
    assert (await client.run(cmd("echo still-serving"))).stdout == b"still-serving\n"


async def test_a_host_agent_adopts_orphans_and_ends_its_whole_tree_on_stop(
    host_agent: subprocess.Popen[bytes], client: AgentClient
) -> None:
    marker = f"sleep 7{os.getpid() % 1000}1"
    # A process that leaves the command's session and group, and ignores SIGTERM: a timeout
    # cannot name it, and its parent (the command) exits at once.
    escaped = f"setsid sh -c \"trap '' TERM; exec {marker}\" > /dev/null 2>&1 & echo started"
    done = await client.run(cmd(escaped))
    assert done.stdout == b"started\n"
    for _ in range(100):
        if pids_alive(marker):
            break
        await asyncio.sleep(0.02)
    [pid] = pids_alive(marker)
    for _ in range(100):
        if parent_of(pid) == host_agent.pid:
            break
        await asyncio.sleep(0.02)
    assert parent_of(pid) == host_agent.pid, "the orphan went to the host's init, not to the agent"

    host_agent.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(host_agent.wait, 30) == 0
    assert await gone(marker, timeout=1.0), "the agent exited and left a process of its tree behind"
