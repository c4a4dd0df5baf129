"""The unsafe host backend as users run it: a real daemon process whose commands are real
processes on this machine (reference §D.9), reached over WebSocket with a token or over stdio."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from boxruntime.config import HOST_BACKEND_REFUSAL
from boxruntime.errors import BoxBackendUnavailableError, BoxValidationError
from boxruntime.protocol import Peer, StreamConnection
from integration_tests.daemon import ROOT, Daemon, connect, daemon_env, eventually, host_agents_of, start_daemon

pytestmark = [pytest.mark.anyio]

# What the daemon is started with and no command may ever see.
SECRET_ENV = {
    "LANGBOT_BOX_CONTROL_TOKEN": "langbot-control-token-" + "q" * 24,
    "E2B_API_KEY": "e2b_secret_key_value",
    "AWS_ACCESS_KEY_ID": "AKIASECRETKEYID",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key-value",
    "OPENAI_API_KEY": "sk-openai-secret-value",
    "DAEMON_PRIVATE_SETTING": "daemon-private-value",
}
# What a command's environment may hold: the inherited five, the session's three, the request's
# own, and what sh sets itself.
ALLOWED_ENV = {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "HOME", "TMPDIR", "LANGBOT_BOX_WORKSPACE"}
SHELL_ENV = {"PWD", "OLDPWD", "SHLVL", "_"}


@pytest.fixture
def host_box(data_dir: Path) -> Iterator[Daemon]:
    """A token-protected WebSocket daemon on the host backend; it must leave no agent behind."""
    daemon = start_daemon(data_dir, "--backend", "host", token=secrets.token_urlsafe(32), env=SECRET_ENV)
    try:
        yield daemon
    finally:
        daemon.stop()
        assert host_agents_of(data_dir) == []


async def run(peer: Peer, cmd: str, session: str = "h", **spec: Any) -> dict[str, Any]:
    return await peer.call("box_exec", {"session_id": session, "cmd": cmd, **spec}, timeout=120)


def exists(path: str) -> bool:
    return os.path.lexists(path)


def is_dir(path: Path) -> bool:
    return path.is_dir()


def run_doctor(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "boxruntime", "doctor", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, env=daemon_env(data_dir, **env), cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip


def alive(pid: int, marker: str) -> bool:
    """``pid`` is still the process we started (not a zombie, not a reused number)."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def test_exec_exit_codes_output_and_streaming(host_box: Daemon) -> None:
    async with connect(host_box) as peer:
        failed = await run(peer, "echo out; echo err >&2; exit 3")
        assert (failed["backend_name"], failed["status"], failed["exit_code"]) == ("host", "completed", 3)
        assert (failed["stdout"], failed["stderr"]) == ("out", "err")
        chunks = [
            item
            async for item in peer.call_stream(
                "box_exec_stream", {"session_id": "h", "cmd": "echo one; echo two >&2; echo three"}, timeout=60
            )
        ]
        result = chunks[-1]["result"]
        assert (result["exit_code"], result["stdout"], result["stderr"]) == (0, "one\nthree", "two")
        streamed = {"stdout": "", "stderr": ""}
        for chunk in chunks[:-1]:
            streamed[chunk["stream"]] += chunk["data"]
        assert streamed == {"stdout": "one\nthree\n", "stderr": "two\n"}


async def test_workdir_is_mapped_and_escapes_are_refused(host_box: Daemon, data_dir: Path) -> None:
    async with connect(host_box) as peer:
        workspace = Path((await run(peer, 'printf %s "$LANGBOT_BOX_WORKSPACE"'))["stdout"])
        assert is_dir(workspace) and (data_dir / "workspaces") in workspace.parents
        sub = await run(peer, "pwd; echo data > here.txt", workdir="/workspace/sub")
        assert sub["stdout"] == f"{workspace}/sub"
        assert (workspace / "sub" / "here.txt").read_text() == "data\n"
        tmp = await run(peer, 'pwd; printf %s "$TMPDIR"', workdir="/tmp")
        own_tmp, tmpdir = tmp["stdout"].splitlines()
        assert own_tmp == tmpdir and (data_dir / "sessions") in Path(own_tmp).parents  # the session's, not /tmp

        await run(peer, "ln -s /etc /workspace/out")
        for workdir, error in (
            ("/etc", "outside the session's mounts"),
            ("/var/tmp", "outside the session's mounts"),
            ("/workspace/out", "escapes mount /workspace"),
        ):
            with pytest.raises(BoxValidationError, match=error):
                await run(peer, "touch ran-here", workdir=workdir)
        assert not exists("/etc/ran-here") and not exists("/var/tmp/ran-here")


async def test_mount_paths_in_commands_become_host_paths(host_box: Daemon, data_dir: Path) -> None:
    shared = data_dir / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from host")
    project = data_dir / "project"  # does not exist yet: created, as LangBot does
    mounts = {
        "host_path": str(project),
        "extra_mounts": [{"host_path": str(shared), "mount_path": "/data", "mode": "ro"}],
    }
    async with connect(host_box) as peer:
        done = await run(
            peer,
            "cat /data/in.txt; echo made > /workspace/made.txt; printf '|%s' /workspace /home/u/workspace /workspacex",
            session="p",
            **mounts,
        )
        assert done["stdout"] == f"from host|{project}|/home/u/workspace|/workspacex"
        assert (project / "made.txt").read_text() == "made\n"
        assert (await run(peer, 'printf %s "$LANGBOT_BOX_WORKSPACE"', session="p", **mounts))["stdout"] == str(project)

        # A host path the shell would split is never pasted into a command.
        spaced = data_dir / "my project"
        with pytest.raises(BoxValidationError, match="characters the shell treats specially"):
            await run(peer, "touch /workspace/x", session="s", host_path=str(spaced))
        quoted = await run(peer, 'echo ok > "$LANGBOT_BOX_WORKSPACE/x" && cat x', session="s", host_path=str(spaced))
        assert quoted["stdout"] == "ok" and (spaced / "x").read_text() == "ok\n"


async def test_commands_get_a_minimal_environment(host_box: Daemon) -> None:
    async with connect(host_box) as peer:
        done = await run(peer, "env", env={"MINE": "mine"})
        names = {line.partition("=")[0] for line in done["stdout"].splitlines()}
        assert names - SHELL_ENV - {"MINE"} <= ALLOWED_ENV, names
        assert {"PATH", "HOME", "TMPDIR", "LANGBOT_BOX_WORKSPACE", "MINE"} <= names
        # The agent that starts every command was itself started with the minimal environment.
        agent_env = (await run(peer, "tr '\\0' '\\n' < /proc/$PPID/environ"))["stdout"]
        assert {line.partition("=")[0] for line in agent_env.splitlines()} <= ALLOWED_ENV
        everything = done["stdout"] + agent_env
        for value in (host_box.token, *SECRET_ENV.values()):
            assert value is not None and value not in everything

        # A managed process gets the same environment.
        spec = {"process_id": "env", "command": "sh", "args": ["-c", "env; echo END; exec cat"], "env": {"MP": "2"}}
        await peer.call("box_start_managed_process", {"session_id": "h", "spec": spec}, timeout=60)
        lines = []
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(relay_url(host_box, "h", "env"), protocols=("mcp",), headers=host_box.headers()) as ws,
        ):
            while (line := (await ws.receive_str(timeout=60)).rstrip("\n")) != "END":
                lines.append(line)
        names = {line.partition("=")[0] for line in lines}
        assert names - SHELL_ENV <= ALLOWED_ENV | {"MP", "PYTHONUNBUFFERED"} and "MP" in names
        for value in (host_box.token, *SECRET_ENV.values()):
            assert value is not None and value not in "\n".join(lines)


RESISTANT = """trap '' TERM
echo $$ > "$LANGBOT_BOX_WORKSPACE/$1.pid"
while :; do sleep 1; done
"""


async def test_timeout_kills_resistant_descendants_and_keeps_the_session(host_box: Daemon) -> None:
    async with connect(host_box) as peer:
        await run(peer, "echo kept > /workspace/keep.txt")
        await peer.call("box_fs_write", {"session_id": "h", "path": "resist.sh", "data": RESISTANT})
        before = await peer.call("box_get_session", {"session_id": "h"})

        timed_out = await run(peer, "sh /workspace/resist.sh child & wait", timeout_sec=2)
        assert (timed_out["status"], timed_out["exit_code"], timed_out["end_reason"]) == ("timed_out", None, "timeout")
        child = int((await run(peer, "cat /workspace/child.pid"))["stdout"])
        await eventually(lambda: not alive(child, "resist.sh"))

        after = await peer.call("box_get_session", {"session_id": "h"})
        assert after["backend_session_id"] == before["backend_session_id"]
        assert (await run(peer, "cat /workspace/keep.txt"))["stdout"] == "kept"

        # One that left the command's session escapes its timeout, but not the end of the session.
        await run(peer, "setsid sh /workspace/resist.sh detached > /dev/null 2>&1 & echo started")
        await run(peer, "while [ ! -s /workspace/detached.pid ]; do sleep 0.05; done")
        detached = int((await run(peer, "cat /workspace/detached.pid"))["stdout"])
        assert alive(detached, "resist.sh")
        root = Path((await run(peer, 'printf %s "$HOME"'))["stdout"]).parent
        await peer.call("box_delete_session", {"session_id": "h"}, timeout=60)
        assert not alive(detached, "resist.sh")
        assert not root.exists()  # the session's home, tmp and agent directory are gone too
    assert host_agents_of(host_box.data_dir) == []


async def test_files_through_the_daemon(host_box: Daemon, data_dir: Path) -> None:
    shared = data_dir / "ro"
    shared.mkdir()
    mounts = {"extra_mounts": [{"host_path": str(shared), "mount_path": "/data", "mode": "ro"}]}
    async with connect(host_box) as peer:
        await peer.call("box_create_session", {"session_id": "f", **mounts}, timeout=60)
        ref = {"session_id": "f"}
        wrote = await peer.call("box_fs_write", {**ref, "path": "/workspace/dir/a.txt", "data": "hello"})
        assert (wrote["path"], wrote["bytes_written"]) == ("/workspace/dir/a.txt", 5)
        read = await peer.call("box_fs_read", {**ref, "path": "dir/a.txt", "encoding": "utf-8"})
        assert (read["path"], read["data"]) == ("/workspace/dir/a.txt", "hello")
        listed = await peer.call("box_fs_list", {**ref, "path": "/workspace", "recursive": True})
        assert [e["path"] for e in listed["entries"]] == ["dir", "dir/a.txt"] and listed["path"] == "/workspace"
        assert (await peer.call("box_fs_stat", {**ref, "path": "dir/a.txt"}))["size"] == 5
        assert (await run(peer, "cat /workspace/dir/a.txt", session="f", **mounts))["stdout"] == "hello"

        await peer.call("box_fs_write", {**ref, "path": "/tmp/t.txt", "data": "temp"})
        assert (await run(peer, "cat /tmp/t.txt; echo; ls $TMPDIR", session="f", **mounts))["stdout"] == "temp\nt.txt"
        assert not exists("/tmp/t.txt")

        await run(peer, "ln -s /etc /workspace/etc-link", session="f", **mounts)
        for path in ("/etc/hostname", "/workspace/etc-link/hostname", "../../etc/hostname"):
            with pytest.raises(BoxValidationError) as refused:
                await peer.call("box_fs_read", {**ref, "path": path})
            assert "outside" in str(refused.value) and str(data_dir) not in str(refused.value)
        with pytest.raises(BoxValidationError, match="read-only"):
            await peer.call("box_fs_write", {**ref, "path": "/data/x", "data": "no"})
        assert not (shared / "x").exists()
        removed = await peer.call("box_fs_remove", {**ref, "path": "dir", "recursive": True})
        assert removed == {"removed": "/workspace/dir", "type": "dir"}


def relay_url(daemon: Daemon, session: str, process_id: str) -> str:
    return f"{daemon.http}/v1/sessions/{session}/managed-process/{process_id}/ws"


TOOL = """#!/bin/sh
echo "$PWD|$1"
exec cat
"""


async def test_managed_processes_through_the_relay(host_box: Daemon) -> None:
    async with connect(host_box) as peer, aiohttp.ClientSession() as http:
        await peer.call("box_create_session", {"session_id": "mp"}, timeout=60)
        await peer.call(
            "box_start_managed_process", {"session_id": "mp", "spec": {"process_id": "cat", "command": "cat"}}
        )
        ping = '{"jsonrpc":"2.0","id":1,"method":"ping"}'
        async with http.ws_connect(
            relay_url(host_box, "mp", "cat"), protocols=("mcp",), headers=host_box.headers()
        ) as ws:
            assert ws.protocol == "mcp"
            await ws.send_str(ping)
            assert (await ws.receive_str(timeout=60)).rstrip("\n") == ping

        # The executable, its cwd and its arguments are sandbox paths, mapped like a command's.
        await peer.call("box_fs_write", {"session_id": "mp", "path": "bin/tool", "data": TOOL, "mode": 0o755})
        spec = {
            "process_id": "tool",
            "command": "/workspace/bin/tool",
            "args": ["/workspace/arg"],
            "cwd": "/workspace/run",
        }
        await peer.call("box_start_managed_process", {"session_id": "mp", "spec": spec}, timeout=60)
        workspace = (await run(peer, 'printf %s "$LANGBOT_BOX_WORKSPACE"', session="mp"))["stdout"]
        async with http.ws_connect(
            relay_url(host_box, "mp", "tool"), protocols=("mcp",), headers=host_box.headers()
        ) as ws:
            assert (await ws.receive_str(timeout=60)).rstrip("\n") == f"{workspace}/run|{workspace}/arg"

        marker = f"{900000 + os.getpid() % 100000}"
        spec = {"process_id": "stubborn", "command": "sh", "args": ["-c", f"trap '' TERM; exec sleep {marker}"]}
        await peer.call("box_start_managed_process", {"session_id": "mp", "spec": spec}, timeout=60)
        [pid] = [p for p in host_agents_children(host_box) if alive(p, marker)]
        await peer.call("box_delete_session", {"session_id": "mp"}, timeout=60)
        assert not alive(pid, marker)


def host_agents_children(daemon: Daemon) -> list[int]:
    """Every process below the daemon's host agents."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in host_agents_of(daemon.data_dir):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--backend", "host"], {}),
        ([], {"BOXRUNTIME_BACKEND": "host"}),
        ([], {"LANGBOT_BOX_CONFIG": json.dumps({"backend": "host"})}),
    ],
)
def test_refused_at_startup_over_a_websocket_without_a_token(
    data_dir: Path, args: list[str], env: dict[str, str]
) -> None:
    daemon = start_daemon(data_dir, *args, env=env, wait=False)
    assert daemon.proc.wait(60) == 2
    log = daemon.log()
    assert "refusing to serve the host backend over WebSocket without a token" in log
    assert HOST_BACKEND_REFUSAL in log and "BOXRUNTIME_TOKEN" in log and "--stdio" in log


async def test_served_over_stdio_without_a_token(data_dir: Path) -> None:
    argv = [sys.executable, "-m", "boxruntime", "serve", "--stdio", "--backend", "host"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=daemon_env(data_dir), cwd=ROOT
    )
    assert proc.stdout is not None and proc.stdin is not None
    peer = Peer(StreamConnection(proc.stdout, proc.stdin), name="stdio-test")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.run)
            health = await peer.call("box_health", {})
            assert (health["name"], health["available"], health["unsafe_direct_execution"]) == ("host", True, True)
            assert (await run(peer, "echo over stdio"))["stdout"] == "over stdio"
            assert len(host_agents_of(data_dir)) == 1
            tg.cancel_scope.cancel()
    finally:
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert host_agents_of(data_dir) == []


NO_SANDBOX_ENV = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "BOXRUNTIME_NSJAIL": "/nonexistent/nsjail"}


async def test_local_never_selects_host_even_when_nothing_else_runs(data_dir: Path) -> None:
    daemon = start_daemon(data_dir, "--backend", "local", env=NO_SANDBOX_ENV)
    try:
        async with connect(daemon) as peer:
            health = await peer.call("box_health", {})
            assert (health["name"], health["available"]) == (None, False)
            assert "docker" in health["reason"] and "nsjail" in health["reason"] and "host" not in health["reason"]
            with pytest.raises(BoxBackendUnavailableError):
                await run(peer, "echo never")
    finally:
        daemon.stop()
    assert host_agents_of(data_dir) == []
    doctor = run_doctor(data_dir, **NO_SANDBOX_ENV)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert "host    available" in doctor.stdout and "NOTHING IS ISOLATED" in doctor.stdout
    assert "selected: none" in doctor.stdout


async def test_backend_info_status_notes_and_doctor_say_it_is_unsafe(host_box: Daemon, data_dir: Path) -> None:
    async with connect(host_box) as peer:
        info = await peer.call("box_get_backend_info", {})
        assert (info["name"], info["available"], info["unsafe_direct_execution"]) == ("host", True, True)
        limits = info["enforced_limits"]
        assert limits["isolation"].startswith("NONE")
        assert all(limits[k].startswith("not enforced") for k in ("network", "cpus", "memory_mb", "pids_limit"))
        assert (await peer.call("box_status", {}))["backend"]["unsafe_direct_execution"] is True
        session = await peer.call("box_create_session", {"session_id": "n", "memory_mb": 64}, timeout=60)
        assert any(note.startswith("UNSAFE host backend") and "not enforced" in note for note in session["notes"])
    doctor = run_doctor(data_dir, "--backend", "host")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "selected: host" in doctor.stdout and "NOTHING IS ISOLATED" in doctor.stdout
    assert "isolation: NONE" in doctor.stdout


async def test_session_processes_die_with_a_killed_daemon(data_dir: Path) -> None:
    daemon = start_daemon(data_dir, "--backend", "host", token=secrets.token_urlsafe(32))
    async with connect(daemon) as peer:
        await peer.call("box_create_session", {"session_id": "k"}, timeout=60)
        await peer.call("box_fs_write", {"session_id": "k", "path": "resist.sh", "data": RESISTANT}, timeout=60)
        await run(peer, "setsid sh /workspace/resist.sh orphan > /dev/null 2>&1 & echo started", session="k")
        await run(peer, "while [ ! -s /workspace/orphan.pid ]; do sleep 0.05; done", session="k")
        pid = int((await run(peer, "cat /workspace/orphan.pid", session="k"))["stdout"])
    assert alive(pid, "resist.sh") and len(host_agents_of(data_dir)) == 1
    daemon.stop(signal.SIGKILL)
    # The agent gets SIGTERM when its daemon dies and takes its whole tree down with it.
    await eventually(lambda: not host_agents_of(data_dir) and not alive(pid, "resist.sh"))


NOBODY = 65534


def reachable_by_others(path: str) -> bool:
    """Every directory on the way to ``path`` is searchable, and the file executable, by anyone."""
    parts = Path(path).parents
    return all(os.stat(p).st_mode & 0o001 for p in parts) and bool(os.stat(path).st_mode & 0o001)


def unprivileged_python() -> list[str]:
    """How to run this interpreter's daemon as an ordinary user: as we are, when we are not root;
    else as nobody (setpriv), with an interpreter nobody can reach and this venv's packages."""
    if os.geteuid() != 0:
        return [sys.executable]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
        if os.path.exists(candidate) and reachable_by_others(candidate):
            return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", candidate]
    raise AssertionError(f"no python{version} that an unprivileged user can run")


async def test_runs_without_root(tmp_path: Path) -> None:
    import shutil
    import sysconfig
    import tempfile

    # Outside tmp_path: pytest keeps that private to root.
    data_dir = Path(tempfile.mkdtemp(prefix="boxruntime-host-unprivileged-")) / "data"
    data_dir.mkdir()
    if os.geteuid() == 0:
        for path in (data_dir.parent, data_dir):
            os.chown(path, NOBODY, NOBODY)
    env = {"PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"}
    daemon = start_daemon(data_dir, "--backend", "host", env=env, python=unprivileged_python(), token="u" * 40)
    try:
        async with connect(daemon) as peer:
            assert (await peer.call("box_health", {}))["unsafe_direct_execution"] is True
            who = await run(peer, "id -u; echo made > /workspace/f.txt; cat /workspace/f.txt")
            assert who["stdout"] == f"{os.geteuid() or NOBODY}\nmade"
            await peer.call("box_fs_write", {"session_id": "h", "path": "resist.sh", "data": RESISTANT})
            timed_out = await run(peer, "sh /workspace/resist.sh child & wait", timeout_sec=1)
            assert timed_out["status"] == "timed_out"
            child = int((await run(peer, "cat /workspace/child.pid"))["stdout"])
            await eventually(lambda: not alive(child, "resist.sh"))
            mkdir = await run(peer, "mkdir -p /workspace/locked/deep && chmod 0 /workspace/locked && echo ok")
            assert mkdir["stdout"] == "ok"  # removing the session must still get rid of it
            await peer.call("box_delete_session", {"session_id": "h"}, timeout=60)
        assert daemon.stop() == 0
        assert host_agents_of(data_dir) == []
        assert list((data_dir / "workspaces").iterdir()) == []
    finally:
        daemon.stop()
        shutil.rmtree(data_dir.parent, ignore_errors=True)
