"""The in-sandbox agent's protocol, against a real agent process (run here on the host).

No sandbox is needed to test what the agent does with processes and its connection; the
integration tests run the same agent inside Docker and nsjail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from boxruntime.backends.agent import takeover
from boxruntime.backends.agent.backend import AGENT_SOURCES
from boxruntime.backends.agent.client import AgentClient, AgentLostError
from boxruntime.backends.agent.commands import CommandExit, CommandRequest, Output
from boxruntime.backends.agent.sandbox import boxagent_wire as wire
from boxruntime.errors import BoxSandboxError, BoxValidationError

pytestmark = pytest.mark.anyio
MIB = 1024 * 1024


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


def cmd(script: str, **fields: object) -> CommandRequest:
    return CommandRequest(cwd="/tmp", env={"PATH": "/usr/bin:/bin"}, script=script, **fields)  # type: ignore[arg-type]


def pids_alive(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_exit_codes_streams_env_cwd_and_quoting(agent: AgentClient, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "QUOTED": 'it\'s "fine" $HOME `x`', "EMPTY": ""}
    for _ in range(3):  # the first may use the spare shell, the next ones a fresh one or a new spare
        done = await agent.run(
            CommandRequest(
                cwd=str(tmp_path / "new" / "dir"), env=env, script='pwd; printf %s "$QUOTED"; echo e >&2; exit 7'
            )
        )
        assert done.exit.code == 7 and done.exit.reason == "exit"
        assert done.stdout == f'{tmp_path}/new/dir\nit\'s "fine" $HOME `x`'.encode()
        assert done.stderr == b"e\n"
    with pytest.raises(BoxValidationError, match="cannot be created"):
        await agent.run(CommandRequest(cwd="/proc/no/such", env={}, script="echo never"))


async def test_commands_get_the_signals_python_ignores_back_at_their_default(agent: AgentClient) -> None:
    # The agent is Python, which ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored
    # across exec. A command must start as under any shell: `yes` dies of SIGPIPE, silently.
    script = "yes | head -n1; grep SigIgn /proc/self/status"
    for _ in range(2):
        await asyncio.sleep(0.3)  # idle: the agent has made a spare shell for the next command
        through_spare = await agent.run(cmd(script))
        fresh = await agent.run(CommandRequest(cwd="/tmp", env={}, argv=["/bin/sh", "-c", script]))  # no spare
        for done in (through_spare, fresh):
            assert done.stderr == b"" and done.stdout.startswith(b"y\nSigIgn:")
            ignored = int(done.stdout.split()[-1], 16)
            assert [sig for sig in (signal.SIGPIPE, signal.SIGXFSZ) if ignored & 1 << (sig - 1)] == []


async def test_a_spare_bash_login_shell_takes_the_shape_of_the_last_command(agent: AgentClient, tmp_path: Path) -> None:
    # E2B runs every command as `bash -l -c CMD`: after one such command the agent keeps spare
    # login shells of that shape, whose profile has run before the next command is asked for.
    home = tmp_path / "home"
    home.mkdir()
    log = home / "profiles.log"
    (home / ".bash_profile").write_text(f'echo "$$" >> {log}\n')
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "QUOTED": "it's $HOME"}
    script = 'echo "$$ $0 $PWD ${OLDPWD-unset} $QUOTED"; no-such-command-here; exit 3'

    def bash(cwd: Path, env: dict[str, str] = env) -> CommandRequest:
        return CommandRequest(cwd=str(cwd), env=env, argv=["/bin/bash", "-l", "-c", script], notify_started=True)

    fresh = await agent.run(bash(tmp_path))
    await eventually_true(lambda: len(log.read_text().split()) == 3)  # both spares have read their profile
    spare_pids = [int(pid) for pid in log.read_text().split()[1:]]
    through_spare = await agent.run(bash(home))
    oldpwd = os.environ.get("OLDPWD", "unset")  # the agent's own environment is the base
    for done, pids, cwd in ((fresh, None, tmp_path), (through_spare, spare_pids, home)):
        first, _, rest = done.stdout.decode().partition(" ")
        assert pids is None or int(first) in pids
        assert rest == f"/bin/bash {cwd} {oldpwd} it's $HOME\n"
        assert done.stderr.endswith(b"no-such-command-here: command not found\n") and done.exit.code == 3
    assert through_spare.stderr == fresh.stderr
    # Another environment is another shape: served fresh (its profile runs now), like the first.
    other = await agent.run(bash(home, {**env, "QUOTED": "other"}))
    assert other.stdout.endswith(b" other\n") and other.exit.code == 3
    other_pid = int(other.stdout.split()[0])
    assert other_pid not in spare_pids and str(other_pid) in log.read_text().split()


async def eventually_true(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the agent's spare is another process's state
            await anyio.sleep(0.02)


async def test_binary_output_and_long_scripts(agent: AgentClient) -> None:
    done = await agent.run(cmd("printf '\\000\\377\\001'"))
    assert done.stdout == b"\x00\xff\x01"
    script = "echo " + "y" * 300_000 + " | wc -c"  # over 128 KiB: goes through a memfd, not argv
    assert (await agent.run(cmd(script))).stdout.strip() == b"300001"


async def test_ten_megabytes_are_clipped_but_counted(agent: AgentClient) -> None:
    done = await agent.run(cmd("head -c 10485760 /dev/zero", output_cap=MIB))
    assert len(done.stdout) == MIB and done.exit.stdout_total == 10 * MIB and done.exit.code == 0


async def test_a_collected_command_without_a_cap_is_bounded_by_the_frame_size(agent: AgentClient) -> None:
    # No output_cap: the agent still keeps at most 8 MiB per stream, so the one exit frame that
    # carries the output stays a frame the daemon accepts (its limit is 32 MiB).
    done = await agent.run(cmd("head -c 20971520 /dev/zero; head -c 10485760 /dev/zero >&2"))
    assert (len(done.stdout), len(done.stderr)) == (8 * MIB, 8 * MIB)
    assert (done.exit.stdout_total, done.exit.stderr_total) == (20 * MIB, 10 * MIB)
    assert agent.connected


async def test_timeout_kills_the_whole_tree(agent: AgentClient) -> None:
    marker = f"sleep 4{os.getpid() % 1000}1"
    # A background child, a child that left the process group (but not the session), the command.
    script = f"{marker} & (set -m; {marker} & wait) & {marker}"
    started = asyncio.create_task(agent.run(cmd(script, timeout=1.5)))
    for _ in range(100):
        if len(pids_alive(marker)) == 3:
            break
        await asyncio.sleep(0.02)
    assert len(pids_alive(marker)) == 3
    done = await started
    assert done.exit.reason == "timeout"
    deadline = time.monotonic() + 5
    while pids_alive(marker) and time.monotonic() < deadline:  # noqa: ASYNC110 - other processes' state
        await asyncio.sleep(0.05)
    assert pids_alive(marker) == []


async def test_background_children_outlive_the_command_but_not_a_timeout(agent: AgentClient) -> None:
    marker = f"sleep 5{os.getpid() % 1000}2"
    done = await agent.run(cmd(f"{marker} > /dev/null 2>&1 & echo started"))
    assert done.stdout == b"started\n" and done.exit.code == 0  # returns without waiting for it
    assert len(pids_alive(marker)) == 1
    for pid in pids_alive(marker):
        os.kill(pid, signal.SIGKILL)


async def test_fifty_concurrent_commands(agent: AgentClient) -> None:
    results = await asyncio.gather(*(agent.run(cmd(f"sleep 0.3; echo {i}")) for i in range(50)))
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(50)]


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def parent_of(pid: int) -> int | None:
    try:
        return int(proc_status(pid)["PPid"])
    except OSError:
        return None  # gone meanwhile


def fd_target(fd: Path) -> str | None:
    try:
        return os.readlink(fd)
    except FileNotFoundError:
        return None  # closed between the listing and now (the next spare shell's pipes come and go)


def pidfds_held(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if fd_target(fd) == "anon_inode:[pidfd]")


async def test_exits_reach_the_agent_through_pidfds_not_signals(agent: AgentClient, agent_dir: Path) -> None:
    # The agent is the fixture's child (a spare shell being spawned briefly shows its cmdline too).
    [agent_pid] = [pid for pid in pids_alive(str(agent_dir / "agent.sock")) if parent_of(pid) == os.getpid()]
    caught = int(proc_status(agent_pid)["SigCgt"], 16)
    assert not caught & (1 << (signal.SIGCHLD - 1)), "SIGCHLD is handled: exits go the slow way"
    results = await asyncio.gather(*(agent.run(cmd(f"exit {i}")) for i in range(20)))
    assert [r.exit.code for r in results] == list(range(20))
    assert pidfds_held(agent_pid) == 0  # each one closed when its process was reaped


async def test_accounting(agent: AgentClient) -> None:
    alloc = await agent.run(cmd("python3 -c 'b = bytearray(200 * 1024 * 1024); b[::4096] = b\"x\" * len(b[::4096])'"))
    assert alloc.exit.code == 0 and alloc.exit.peak_rss_kb >= 200 * 1024
    idle = await agent.run(cmd("sleep 0.5"))
    assert idle.exit.cpu_ms < 100 and idle.exit.wall_ms >= 450
    busy = await agent.run(
        cmd("python3 -c 'import time; t = time.process_time(); exec(\"while time.process_time() - t < 0.3: pass\")'")
    )
    assert busy.exit.cpu_ms >= 250


async def test_a_cancelled_caller_kills_its_command(agent: AgentClient) -> None:
    marker = f"sleep 6{os.getpid() % 1000}3"
    task = asyncio.create_task(agent.run(cmd(marker)))
    for _ in range(100):
        if pids_alive(marker):
            break
        await asyncio.sleep(0.02)
    assert pids_alive(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not pids_alive(marker):
            break
        await asyncio.sleep(0.02)
    assert pids_alive(marker) == []


def kept_process(argv: list[str], stdin: bool = True) -> CommandRequest:
    """A long-lived process as the daemon runs them: its pipes handed over, kept on disconnect."""
    return CommandRequest(
        cwd="/tmp",
        env={"PATH": "/usr/bin:/bin"},
        argv=argv,
        stdin=stdin,
        keep_on_disconnect=True,
        notify_started=True,
        handoff=True,
    )


# The two ways a process's stdio reaches the daemon: its pipes passed over the socket, or the
# daemon's own sockets as its stdio (gVisor, where descriptors cannot leave the sandbox).
HANDOVERS = pytest.mark.parametrize("pass_fds", [True, False], ids=["pipes-passed", "stdio-sockets"])


@HANDOVERS
async def test_connection_loss_kills_execs_and_keeps_processes(agent_dir: Path, pass_fds: bool) -> None:
    client = AgentClient(agent_dir, "lossy", pass_fds=pass_fds)
    await client.connect(timeout=30)
    exec_marker = f"sleep 7{os.getpid() % 1000}4"
    running = asyncio.create_task(client.run(cmd(exec_marker)))
    server = await client.spawn(kept_process(["sh", "-c", 'while read line; do echo "got $line"; done']))
    await server.started()
    pipes = await client.take_fds(server)
    assert pipes.stdin is not None
    stdin, stdout = os.fdopen(pipes.stdin, "wb", buffering=0), os.fdopen(pipes.stdout, "rb", buffering=0)
    stdin.write(b"one\n")
    assert stdout.readline() == b"got one\n"

    assert client._writer is not None
    client._writer.transport.abort()  # the connection drops (daemon restart, broken pipe ...)
    with pytest.raises(AgentLostError):
        await running  # nobody is left to read an exec: the agent kills it
    # The kept process lives on, and its pipes (held by us, not the agent) still work.
    stdin.write(b"two\n")
    assert stdout.readline() == b"got two\n"
    await client.connect(timeout=30)  # reconnect: the kept process is re-attached
    stdin.close()
    if pass_fds:
        await server.write_input(b"", eof=True)  # the agent's own copy of a kept stdin goes too
    events = [event async for event in server.events()]
    assert isinstance(events[-1], CommandExit) and events[-1].code == 0
    assert not any(isinstance(e, Output) for e in events)  # its output never went through the agent
    for _ in range(100):
        if not pids_alive(exec_marker):
            break
        await asyncio.sleep(0.02)
    assert pids_alive(exec_marker) == []
    assert client.reconnects == 1
    stdout.close()
    os.close(pipes.stderr)
    await client.close()


@HANDOVERS
async def test_the_exit_of_a_detached_process_is_kept_for_the_next_attach(agent_dir: Path, pass_fds: bool) -> None:
    client = AgentClient(agent_dir, "detached", pass_fds=pass_fds)
    await client.connect(timeout=30)
    proc = await client.spawn(kept_process(["sh", "-c", "sleep 0.3; echo while-away; exit 5"], stdin=False))
    await proc.started()
    pipes = await client.take_fds(proc)
    assert pipes.stdin is None
    assert client._writer is not None
    client._writer.transport.abort()
    await asyncio.sleep(0.6)  # the process writes and exits while nobody is connected
    with os.fdopen(pipes.stdout, "rb", buffering=0) as stdout:
        assert stdout.read() == b"while-away\n"  # what it wrote waited in the pipe we hold
    os.close(pipes.stderr)
    await client.connect(timeout=30)
    seen = [event async for event in proc.events()]
    assert len(seen) == 1 and isinstance(seen[0], CommandExit) and seen[0].code == 5
    await client.close()


async def test_a_successor_takes_over_a_kept_process_and_what_it_wrote_meanwhile(agent_dir: Path) -> None:
    first = AgentClient(agent_dir, "first")
    await first.connect(timeout=30)
    script = 'echo ready; while read line; do echo "got $line"; done; echo bye'
    server = await first.spawn(kept_process(["sh", "-c", script]))
    pid = await server.started()
    pipes = await first.take_fds(server)
    assert pipes.stdin is not None
    stdin, stdout = os.fdopen(pipes.stdin, "wb", buffering=0), os.fdopen(pipes.stdout, "rb", buffering=0)
    assert stdout.readline() == b"ready\n"
    stdin.write(b"before\n")
    # The first daemon dies: the kernel closes everything it held, its connection included.
    stdin.close()
    stdout.close()
    os.close(pipes.stderr)
    assert first._writer is not None
    first._writer.transport.abort()
    await first.close()

    successor = AgentClient(agent_dir, "successor")
    await successor.connect(timeout=30)
    adopted, handed = await successor.adopt(server.id, pid)
    assert adopted.pid == pid and handed.stdin is not None
    stdin, stdout = os.fdopen(handed.stdin, "wb", buffering=0), os.fdopen(handed.stdout, "rb", buffering=0)
    assert stdout.readline() == b"got before\n"  # written while no daemon held the pipes
    stdin.write(b"after\n")
    assert stdout.readline() == b"got after\n"
    stdin.close()
    await adopted.write_input(b"", eof=True)
    assert stdout.readline() == b"bye\n"
    stdout.close()
    os.close(handed.stderr)
    events = [event async for event in adopted.events()]
    assert isinstance(events[-1], CommandExit) and events[-1].code == 0
    with pytest.raises(BoxSandboxError, match="did not hand over"):
        await successor.adopt("c-no-such-process", None)
    await successor.close()


@HANDOVERS
async def test_a_successor_ends_the_kept_processes_no_record_names(agent_dir: Path, pass_fds: bool) -> None:
    """A kept process the dead daemon left and no record names is ended, whether its pipes can
    be taken again (passed pipes) or not (the dead daemon's own stdio sockets, as under gVisor)."""
    marker = f"sleep 8{os.getpid() % 1000}{int(pass_fds)}"
    first = AgentClient(agent_dir, "first", pass_fds=pass_fds)
    await first.connect(timeout=30)
    stray = await first.spawn(kept_process(["sh", "-c", f"{marker}; true"], stdin=False))
    await stray.started()
    pipes = await first.take_fds(stray)
    for fd in (pipes.stdin, pipes.stdout, pipes.stderr):
        if fd is not None:
            os.close(fd)  # the first daemon dies: the kernel closes what it held
    assert first._writer is not None
    first._writer.transport.abort()
    await first.close()

    deadline = time.monotonic() + 30  # generous: a loaded machine runs the agent late
    while True:  # until the agent has seen the first connection go
        successor = AgentClient(agent_dir, "successor", pass_fds=pass_fds)
        await successor.connect(timeout=30)
        if stray.id in successor.detached_at_start or time.monotonic() > deadline:
            break
        await successor.close()
        await asyncio.sleep(0.02)
    assert stray.id in successor.detached_at_start
    assert pids_alive(marker) != []
    assert await takeover.end_strays(successor, known=()) == [stray.id]
    deadline = time.monotonic() + 30
    while pids_alive(marker) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls /proc
        await asyncio.sleep(0.02)
    assert pids_alive(marker) == []
    await successor.close()
    again = AgentClient(agent_dir, "third", pass_fds=pass_fds)
    await again.connect(timeout=30)
    assert again.detached_at_start == []  # reported and forgotten by the agent
    await again.close()


async def test_malformed_frames_do_not_hurt_the_agent(agent: AgentClient, agent_dir: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(agent_dir / "agent.sock"))
    await reader.readexactly(8)  # the hello's header lengths; the rest is not needed
    writer.write(b"\x00\x00\x00\x05\x00\x00\x00\x00nope!" + b"\xff" * 64)
    writer.write(b"\x7f\xff\xff\xff\x00\x00\x00\x00")  # an absurd header length: connection dropped
    with contextlib.suppress(ConnectionError):  # the agent may drop it before the drain returns
        await writer.drain()
    writer.close()
    assert (await agent.run(cmd("echo still fine"))).stdout == b"still fine\n"


async def test_a_spawn_naming_stdio_sockets_the_agent_lacks_fails_and_runs_nothing(
    agent: AgentClient, agent_dir: Path, tmp_path: Path
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(agent_dir / "agent.sock"))

    async def frame() -> dict[str, object]:
        hlen, blen = wire.PREFIX.unpack(await reader.readexactly(wire.PREFIX.size))
        header = json.loads(await reader.readexactly(hlen))
        await reader.readexactly(blen)
        return dict(header)

    assert (await frame())["ev"] == "hello"
    marker = tmp_path / "ran"
    spawn = {"op": "spawn", "id": "x1", "cwd": "/tmp", "env": {}, "argv": ["touch", str(marker)]}
    spawn["stdio"] = [None, "never-opened.out", "never-opened.err"]
    raw = json.dumps(spawn).encode()
    writer.write(wire.PREFIX.pack(len(raw), 0) + raw)
    failed = await frame()
    assert failed["ev"] == "failed" and "no stdio socket" in str(failed["error"])
    writer.close()
    assert not marker.exists()
    assert (await agent.run(cmd("echo still fine"))).stdout == b"still fine\n"
