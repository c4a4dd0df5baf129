"""The agent's stdin and terminal support, and the shell errors a user sees, against a real agent
process on the host (the integration tests run the same agent inside Docker and nsjail)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from boxruntime.backends.agent.backend import AGENT_SOURCES
from boxruntime.backends.agent.client import AgentClient, AgentOpError, AgentProcess
from boxruntime.backends.agent.commands import CommandExit, CommandRequest, Output

pytestmark = pytest.mark.anyio
ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def agent_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "agent"
    directory.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(AGENT_SOURCES / "boxagent.py"), str(directory / "agent.sock")],
        start_new_session=True,
    )
    try:
        yield directory
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
async def agent(agent_dir: Path) -> AsyncIterator[AgentClient]:
    client = AgentClient(agent_dir, "test")
    await client.connect(timeout=30)
    try:
        yield client
    finally:
        await client.close()


async def collect(proc: AgentProcess) -> tuple[bytes, bytes, CommandExit]:
    out = {1: bytearray(), 2: bytearray()}
    async for event in proc.events():
        if isinstance(event, Output):
            out[event.stream] += event.data
        else:
            return bytes(out[1]), bytes(out[2]), event
    raise AssertionError("no exit event")


async def read_until(events: AsyncIterator[Output | CommandExit], seen: bytearray, marker: bytes) -> None:
    """Read a terminal's output until ``marker`` has appeared (a prompt, a printed size)."""
    with anyio.fail_after(30):
        while marker not in seen:
            event = await anext(events)
            assert isinstance(event, Output), f"ended before {marker!r}: {bytes(seen)!r}"
            seen += event.data


async def test_a_missing_command_is_reported_as_the_shell_would_after_sh_c(agent: AgentClient) -> None:
    # The first exec may go through the spare shell, the next through a fresh one; a long
    # script goes through a memfd. None of them may name a file of the agent's.
    long_script = ": " + "x" * 70_000 + "\nnosuchcmd"
    scripts = ["nosuchcmd", "nosuchcmd", "cd /tmp && nosuchcmd", long_script]
    for script in scripts:
        done = await agent.run(CommandRequest(cwd="/tmp", env=ENV, script=script))
        stderr = done.stderr.decode()
        assert done.exit.code == 127, stderr
        assert "/proc/self" not in stderr and "/bin/sh" not in stderr, stderr
        line = 2 if script is long_script else 1
        assert stderr == f"sh: {line}: nosuchcmd: not found\n"


async def test_commands_never_read_their_own_script_as_input(agent: AgentClient) -> None:
    # cat reads /dev/null, whether the script came through the spare shell's pipe or a memfd.
    for script in ["cat; echo done", "cat; echo done #" + "x" * 70_000]:
        done = await agent.run(CommandRequest(cwd="/tmp", env=ENV, script=script))
        assert (done.exit.code, done.stdout) == (0, b"done\n")
    only_a_comment = await agent.run(CommandRequest(cwd="/tmp", env=ENV, script="# nothing to do"))
    assert only_a_comment.exit.code == 0
    status = await agent.run(CommandRequest(cwd="/tmp", env=ENV, script="false"))
    assert status.exit.code == 1


async def test_input_reaches_the_command_and_eof_ends_it(agent: AgentClient) -> None:
    proc = await agent.spawn(CommandRequest(cwd="/tmp", env=ENV, script="cat; echo end", stdin=True))
    await proc.write_input(b"hello ")
    await proc.write_input(b"x" * 300_000)  # more than a pipe holds: written as cat reads
    await proc.write_input(b"\n", eof=True)
    stdout, _, exit = await collect(proc)
    assert exit.code == 0
    assert stdout == b"hello " + b"x" * 300_000 + b"\nend\n"


async def test_input_to_a_command_that_has_exited_is_refused(agent: AgentClient) -> None:
    proc = await agent.spawn(CommandRequest(cwd="/tmp", env=ENV, script="exit 3", stdin=True))
    _, _, exit = await collect(proc)
    assert exit.code == 3
    with pytest.raises(AgentOpError, match="no more input"):
        await proc.write_input(b"late\n")


async def test_a_command_without_stdin_takes_no_input(agent: AgentClient) -> None:
    proc = await agent.spawn(CommandRequest(cwd="/tmp", env=ENV, script="sleep 5"))
    with pytest.raises(AgentOpError, match="no more input"):
        await proc.write_input(b"x")
    proc.kill_soon()
    await collect(proc)


async def test_a_terminal_is_the_controlling_one_and_can_be_resized(agent: AgentClient) -> None:
    request = CommandRequest(cwd="/tmp", env={**ENV, "PS1": "$ "}, script="exec sh -i", stdin=True, tty=(30, 100))
    proc = await agent.spawn(request)
    events = proc.events()
    seen = bytearray()
    await read_until(events, seen, b"$ ")
    await proc.write_input(b"stty size; [ -t 0 ] && tty\n")
    await read_until(events, seen, b"/dev/pts/")
    assert b"30 100" in seen
    await proc.resize(40, 120)
    seen.clear()
    await proc.write_input(b"stty size\n")
    await read_until(events, seen, b"40 120")
    # ^C reaches the foreground command through the terminal, not the shell. It is typed once
    # the foreground job has printed "sleeping": that job is then running, so ^C reaches it.
    seen.clear()
    await proc.write_input(b"sh -c 'echo sleep\"\"ing; exec sleep 30'; echo after-sleep\n")
    await read_until(events, seen, b"sleeping\r\n")
    await proc.write_input(b"\x03")
    await read_until(events, seen, b"$ ")
    assert b"\nafter-sleep" not in seen  # the echo of the typed line holds "echo after-sleep"
    await proc.write_input(b"exit 5\n")
    with anyio.fail_after(30):
        async for event in events:
            if isinstance(event, CommandExit):
                assert event.code == 5
                break
    with pytest.raises(AgentOpError, match=r"no terminal|no more input"):
        await proc.resize(10, 10)
