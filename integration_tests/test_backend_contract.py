"""The backend contract (boxruntime/backends/contract.py), held against every backend this machine
runs: the same calls, the same behaviour. Each backend is driven directly, in-process, as the
runtime drives it: a sandbox is started, used and stopped; nothing of it may be left behind.

What a backend cannot enforce it must say (``probe().enforced_limits``): the host backend's
missing limits are checked as absent, not skipped.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest

from boxruntime.backends.contract import (
    Backend,
    Command,
    CommandExit,
    Output,
    Process,
    SandboxFileError,
    SandboxHandle,
    TerminalSize,
)
from boxruntime.backends.selection import make_backend
from boxruntime.config import Settings
from boxruntime.errors import BoxSandboxError
from boxruntime.instance import InstanceLock
from boxruntime.models import BoxSpec
from integration_tests.daemon import containers_of

pytestmark = pytest.mark.anyio

BACKENDS = ["docker", "gvisor", "nsjail", "host"]
WORKSPACE = "/workspace"
ROOTS = [WORKSPACE, "/tmp"]


class Sandbox:
    """One started sandbox of a backend, with the calls the tests make."""

    def __init__(self, backend: Backend[Any], handle: SandboxHandle) -> None:
        self.backend = backend
        self.handle = handle

    async def run(self, script: str, **fields: Any) -> tuple[int | None, bytes, bytes, CommandExit]:
        done = await self.backend.run(self.handle, Command(cwd=fields.pop("cwd", WORKSPACE), script=script, **fields))
        return done.exit.code, done.stdout, done.stderr, done.exit

    async def start(self, command: Command, lasting: bool = False) -> Process:
        return await self.backend.start_command(self.handle, command, lasting=lasting)


async def collect(process: Process) -> tuple[bytes, bytes, CommandExit]:
    out = {1: bytearray(), 2: bytearray()}
    with anyio.fail_after(60):
        async for event in process.events():
            if isinstance(event, Output):
                out[event.stream] += event.data
            else:
                await process.close()
                return bytes(out[1]), bytes(out[2]), event
    raise AssertionError("the events ended without the command's end")


@pytest.fixture(params=BACKENDS)
async def sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sandbox]:
    name: str = request.param
    if name in ("docker", "gvisor"):
        docker.from_env().ping()  # the engine must be there (CI starts it); a failure, not a skip
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    lock = InstanceLock(data_dir)
    lock.acquire()
    backend = make_backend(name, Settings(data_dir=data_dir, pool_size=0), lock.instance_id)
    info = await backend.probe()
    assert info.available, info.reason
    spec = BoxSpec(session_id=f"contract-{uuid.uuid4().hex[:8]}", memory_mb=256, pids_limit=64)
    handle = await backend.start(spec, spec.session_id)
    try:
        yield Sandbox(backend, handle)
    finally:
        await backend.stop(handle)
        await backend.close()
        lock.release()
        if name in ("docker", "gvisor"):
            assert containers_of(data_dir) == []


# ── commands ─────────────────────────────────────────────────────────────


async def test_run_gives_exit_code_and_exact_output(sandbox: Sandbox) -> None:
    code, out, err, exit = await sandbox.run("printf 'a\\0b'; printf err >&2; exit 3")
    assert (code, out, err, exit.reason) == (3, b"a\0b", b"err", "exit")
    code, out, _, _ = await sandbox.run("pwd; echo $GREETING", cwd="/workspace/made/here", env={"GREETING": "hi"})
    # On the host backend the workspace is a host directory, and a command sees its real path.
    where = b"/made/here\n" if sandbox.backend.name == "host" else b"/workspace/made/here\n"
    assert code == 0 and out.endswith(where + b"hi\n")


async def test_output_beyond_the_cap_is_counted_not_kept(sandbox: Sandbox) -> None:
    _, out, _, exit = await sandbox.run("head -c 100000 /dev/zero", output_cap=1000)
    assert len(out) == 1000 and exit.stdout_total == 100000


async def test_a_started_command_streams_its_output_then_its_end(sandbox: Sandbox) -> None:
    process = await sandbox.start(Command(cwd=WORKSPACE, script="for i in 1 2 3; do echo $i; sleep 0.05; done"))
    out, _, exit = await collect(process)
    assert out == b"1\n2\n3\n" and exit.code == 0


async def test_a_cancelled_command_ends_and_the_sandbox_goes_on(sandbox: Sandbox) -> None:
    process = await sandbox.start(Command(cwd=WORKSPACE, script="sleep 30"))
    process.cancel()
    _, _, exit = await collect(process)
    assert exit.code != 0
    assert (await sandbox.run("echo alive"))[1] == b"alive\n"


async def test_a_timeout_ends_the_command_and_keeps_the_sandbox(sandbox: Sandbox) -> None:
    await sandbox.run("echo kept > /workspace/kept.txt")
    started = anyio.current_time()
    _, _, _, exit = await sandbox.run("sleep 30", timeout=1.0)
    assert exit.reason == "timeout" and anyio.current_time() - started < 20
    assert await sandbox.backend.alive(sandbox.handle)
    assert (await sandbox.run("cat /workspace/kept.txt"))[1] == b"kept\n"


async def test_a_lasting_process_takes_stdin_and_outlives_nothing_it_should_not(sandbox: Sandbox) -> None:
    process = await sandbox.start(Command(cwd=WORKSPACE, argv=["cat"], stdin=True), lasting=True)
    assert await process.started() > 0
    await process.write(b"line one\nline two\n")
    await process.write(b"", eof=True)
    out, _, exit = await collect(process)
    assert (out, exit.code) == (b"line one\nline two\n", 0)


async def test_a_signal_reaches_a_lasting_process(sandbox: Sandbox) -> None:
    process = await sandbox.start(Command(cwd=WORKSPACE, argv=["sleep", "30"]), lasting=True)
    await process.started()
    await process.signal(signal.SIGKILL, until_gone=True)
    _, _, exit = await collect(process)
    assert exit.code != 0


async def test_a_command_on_a_terminal_sees_its_size(sandbox: Sandbox) -> None:
    process = await sandbox.start(
        Command(cwd=WORKSPACE, script="stty size; [ -t 0 ] && echo tty", terminal=TerminalSize(rows=31, cols=97))
    )
    out, _, exit = await collect(process)
    assert b"31 97" in out and b"tty" in out and exit.code == 0


# ── files ────────────────────────────────────────────────────────────────


async def test_files_round_trip_byte_for_byte(sandbox: Sandbox) -> None:
    backend, handle = sandbox.backend, sandbox.handle
    blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
    written = await backend.write_file(handle, "/workspace/dir/blob.bin", ROOTS, blob)
    assert (written.size, written.bytes_written) == (len(blob), len(blob))
    chunk = await backend.read_file(handle, "/workspace/dir/blob.bin", ROOTS, 0, 4 * 1024 * 1024)
    assert chunk.data == blob and chunk.eof
    assert (await sandbox.run("sha256sum /workspace/dir/blob.bin | cut -c1-8"))[1] != b""
    info = await backend.stat(handle, "/workspace/dir/blob.bin", ROOTS)
    assert (info.exists, info.type, info.size) == (True, "file", len(blob))
    listing = await backend.list_dir(handle, "/workspace/dir", ROOTS)
    assert [(e.name, e.type) for e in listing.entries] == [("blob.bin", "file")]
    moved = await backend.move(handle, "/workspace/dir/blob.bin", "/workspace/moved.bin", ROOTS)
    assert moved.path == "/workspace/moved.bin" and moved.size == len(blob)
    made = await backend.make_dir(handle, "/workspace/a/b", ROOTS)
    assert made.type == "dir"
    removed = await backend.remove(handle, "/workspace/moved.bin", ROOTS)
    assert removed.type == "file"
    assert not (await backend.stat(handle, "/workspace/moved.bin", ROOTS)).exists


@pytest.mark.parametrize("path", ["/etc/passwd", "/workspace/../etc/passwd"])
async def test_files_stay_under_their_roots(sandbox: Sandbox, path: str) -> None:
    with pytest.raises(SandboxFileError):
        await sandbox.backend.read_file(sandbox.handle, path, ROOTS, 0, 100)


async def test_a_missing_file_is_enoent(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxFileError) as missing:
        await sandbox.backend.read_file(sandbox.handle, "/workspace/none.txt", ROOTS, 0, 100)
    assert missing.value.code == "ENOENT"


async def test_a_watch_sees_a_change(sandbox: Sandbox) -> None:
    watch = await sandbox.backend.watch(sandbox.handle, WORKSPACE, ROOTS)
    try:
        await sandbox.backend.write_file(sandbox.handle, "/workspace/seen.txt", ROOTS, b"x")
        with anyio.fail_after(10):
            names: list[str] = []
            while "seen.txt" not in names:
                names += [change.name for change in await watch.next_batch()]
    finally:
        watch.close()


# ── limits: enforced, or said not to be ─────────────────────────────────

ENFORCED = ("memory_mb", "pids_limit", "network")
FORK_STORM = """
import os, signal, time
children = []
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
print(len(children))
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


async def test_limits_are_enforced_or_reported_absent(sandbox: Sandbox) -> None:
    info = await sandbox.backend.probe()
    said = info.enforced_limits
    if info.unsafe_direct_execution:
        assert all("not enforced" in said[name] for name in ("memory_mb", "pids_limit", "network"))
        return
    # gVisor here: no network at all (its runtime runs with --network=none), which holds too.
    assert all(said[name].startswith(("enforced", "always off")) for name in ENFORCED), said
    # 64 pids: a fork storm is refused (counted by the forking process itself, which then ends
    # its children, so the next commands have the whole budget again).
    code, out, _, _ = await sandbox.run(f"python3 -c '{FORK_STORM}'", timeout=60)
    assert code == 0 and 0 < int(out) < 64, out
    _, out, _, _ = await sandbox.run("cat /sys/class/net/*/operstate 2>/dev/null | sort -u; ls /sys/class/net")
    assert set(out.split()) <= {b"lo", b"unknown", b"down"}  # no interface but loopback
    # 256 MB of memory: a 640 MB allocation dies, alone or, where the backend says so, with its
    # whole sandbox (gVisor has no OOM killer inside), and then with an error that says why.
    hog = "python3 -c 'x = b\"x\" * (640 << 20)'"  # every page written, well over any headroom
    if "whole sandbox" in said["memory_mb"]:
        with pytest.raises(BoxSandboxError, match="ran out of memory"):
            await sandbox.run(hog, timeout=60)
        return
    code, _, _, exit = await sandbox.run(hog, timeout=60)
    assert code != 0 or exit.reason == "oom"
