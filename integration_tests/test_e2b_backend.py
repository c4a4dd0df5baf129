"""What the e2b backend does beyond the contract every backend meets (test_backend_contract.py),
LangBot's client (test_langbot_conformance.py) and managed processes (test_managed_processes.py,
test_bridge_mcp.py): host workspaces copied both ways, a sandbox that the server ended, leases,
orphans, and ``doctor``. Its sandboxes run on a second daemon that speaks E2B's API, reached
through E2B's own SDK (integration_tests/e2b_cluster.py).
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from boxruntime.backends.selection import make_backend
from boxruntime.config import Settings
from boxruntime.errors import BoxSandboxError, BoxSessionConflictError
from boxruntime.instance import InstanceLock
from boxruntime.models import BoxSpec
from boxruntime.protocol import Peer
from integration_tests.daemon import ROOT, connect, daemon_env, start_daemon
from integration_tests.e2b_cluster import backend_env, e2b_daemon, sandboxes_on_cluster, served_by
from integration_tests.e2b_site import E2BSite

pytestmark = [pytest.mark.anyio]


def doctor(data_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in daemon_env(data_dir).items() if not k.startswith("E2B_")}
    return subprocess.run(
        [sys.executable, "-m", "boxruntime", "doctor", "--backend", "e2b"],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_reports_the_e2b_backend(e2b_server: E2BSite, data_dir: Path) -> None:
    reachable = doctor(data_dir, backend_env(e2b_server))
    assert reachable.returncode == 0, reachable.stderr
    assert f"e2b     available   E2B API at {e2b_server.daemon.http}" in reachable.stdout
    assert "memory_mb: not enforced" in reachable.stdout and "selected: e2b" in reachable.stdout
    missing = doctor(data_dir, {})
    assert missing.returncode == 1
    assert "e2b     unavailable no E2B API key: set E2B_API_KEY" in missing.stdout


async def test_host_workspaces_are_copied_in_and_back(e2b_server: E2BSite, tmp_path: Path, data_dir: Path) -> None:
    root = tmp_path / "mounts"
    workspace, tools, outside = root / "ws", root / "tools", tmp_path / "outside"
    for directory in (workspace / "src", tools, outside):
        directory.mkdir(parents=True)
    (workspace / "src" / "main.py").write_text("print('hi')\n")
    (workspace / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (workspace / "run.sh").chmod(0o755)
    (workspace / "kept-here.txt").write_text("the host's\n")
    (workspace / "escape").symlink_to(outside)  # never followed, either way
    (tools / "tool.txt").write_text("read only\n")
    spec = {
        "session_id": "ws",
        "host_path": str(workspace),
        "extra_mounts": [{"host_path": str(tools), "mount_path": "/opt/tools", "mode": "ro"}],
    }
    with e2b_daemon(e2b_server, data_dir, "--allow-mount-root", str(root)) as daemon:
        async with connect(daemon) as peer:

            async def run(cmd: str) -> dict[str, object]:
                return await peer.call("box_exec", {**spec, "cmd": cmd}, timeout=120)

            seen = await run("cat src/main.py; ./run.sh; cat /opt/tools/tool.txt; ls -a")
            assert seen["exit_code"] == 0, seen
            assert seen["stdout"].startswith("print('hi')\nran\nread only\n")  # type: ignore[union-attr]
            assert "escape" not in str(seen["stdout"]).split()
            refused = await run("echo no > /opt/tools/tool.txt")
            assert refused["exit_code"] != 0 and "Permission denied" in str(refused["stderr"])
            # What a command changes is on the host when the command returns.
            wrote = await run(
                "mkdir -p out && printf made > out/new.txt && echo changed >> src/main.py && rm run.sh "
                "&& mkdir escape && echo evil > escape/evil.txt"
            )
            assert wrote["exit_code"] == 0, wrote
            assert (workspace / "out" / "new.txt").read_text() == "made"
            assert (workspace / "src" / "main.py").read_text() == "print('hi')\nchanged\n"
            assert not (workspace / "run.sh").exists()
            assert list(outside.iterdir()) == []  # nothing written through the host's symlink
            # Changed on the host and deleted in the sandbox: the host's change is kept.
            (workspace / "kept-here.txt").write_text("changed here\n")
            assert (await run("rm kept-here.txt"))["exit_code"] == 0
            assert (workspace / "kept-here.txt").read_text() == "changed here\n"
            # The file API's writes reach the host too; a change no command's end brought back
            # (a managed process's) comes back when the session ends.
            await peer.call("box_fs_write", {"session_id": "ws", "path": "api.txt", "data": "via api"})
            assert (workspace / "api.txt").read_text() == "via api"
            process = {"process_id": "late", "command": "sh", "args": ["-c", "echo last > last.txt; sleep 60"]}
            await peer.call("box_start_managed_process", {"session_id": "ws", "spec": process}, timeout=60)
            await until_exists(peer, "last.txt")
            assert not (workspace / "last.txt").exists()
            await peer.call("box_delete_session", {"session_id": "ws"}, timeout=120)
            assert (workspace / "last.txt").read_text() == "last\n"
    assert (tools / "tool.txt").read_text() == "read only\n"


async def until_exists(peer: Peer, path: str) -> None:
    """Until the file is in the session's sandbox (a managed process makes it)."""
    with anyio.fail_after(60):
        # Another process makes the file: nothing to await (hence the noqa).
        while not (await peer.call("box_fs_stat", {"session_id": "ws", "path": path}))["exists"]:  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def test_a_sandbox_the_server_ended_is_made_again(e2b_server: E2BSite, data_dir: Path) -> None:
    with e2b_daemon(e2b_server, data_dir) as daemon:
        async with connect(daemon) as peer:
            first = await peer.call("box_exec", {"session_id": "s", "cmd": "echo one"}, timeout=120)
            assert first["stdout"] == "one"
            [sandbox_id] = sandboxes_on_cluster(data_dir)
            async with httpx.AsyncClient() as http:  # the server ends it, as E2B does at a timeout
                killed = await http.delete(
                    f"{e2b_server.daemon.http}/sandboxes/{sandbox_id}", headers={"X-API-KEY": e2b_server.api_key}
                )
            assert killed.status_code == 204
            # Nothing tells the daemon at once (no connection to E2B stays open): the next
            # request finds out, fails saying so, and the one after gets a new sandbox.
            with pytest.raises(BoxSandboxError, match=r"the E2B sandbox is gone.*next request makes a new one"):
                await peer.call("box_exec", {"session_id": "s", "cmd": "echo two"}, timeout=120)
            again = await peer.call("box_exec", {"session_id": "s", "cmd": "echo three"}, timeout=120)
            assert again["stdout"] == "three"
            assert sandboxes_on_cluster(data_dir) not in ([], [sandbox_id])
    assert "sandbox is gone, recreating it" in daemon.log()


async def test_sandboxes_of_a_daemon_that_died_are_removed_by_the_next(e2b_server: E2BSite, data_dir: Path) -> None:
    with served_by(e2b_server, data_dir):
        env = backend_env(e2b_server)
        dead = start_daemon(data_dir, "--backend", "e2b", env=env)
        async with connect(dead) as peer:
            await peer.call("box_create_session", {"session_id": "orphan"}, timeout=120)
        assert len(sandboxes_on_cluster(data_dir)) == 1
        assert dead.stop(signal.SIGKILL) == -signal.SIGKILL
        assert len(sandboxes_on_cluster(data_dir)) == 1  # E2B would end it at its timeout
        heir = start_daemon(data_dir, "--backend", "e2b", env=env)
        try:
            assert sandboxes_on_cluster(data_dir) == []  # removed before the heir listens
            assert "removed 1 sandboxes left by dead daemons" in heir.log()
        finally:
            assert heir.stop() == 0


async def test_upkeep_renews_the_sandbox_timeout(e2b_server: E2BSite, data_dir: Path) -> None:
    url = e2b_server.daemon.http
    settings = Settings(
        data_dir=data_dir, pool_size=0, e2b_api_key=e2b_server.api_key, e2b_api_url=url, e2b_sandbox_url=url
    )
    lock = InstanceLock(data_dir)
    lock.acquire()
    with served_by(e2b_server, data_dir):
        backend = make_backend("e2b", settings, lock.instance_id)
        spec = BoxSpec(session_id=f"lease-{uuid.uuid4().hex[:6]}")
        handle = await backend.start(spec, spec.session_id)
        try:

            async def ends() -> dt.datetime:
                async with httpx.AsyncClient() as http:
                    info = await http.get(
                        f"{url}/sandboxes/{handle.sandbox_id}", headers={"X-API-KEY": e2b_server.api_key}
                    )
                return dt.datetime.fromisoformat(info.json()["endAt"])

            before = await ends()
            await backend.upkeep()
            assert await ends() > before
        finally:
            await backend.stop(handle)
            await backend.close()
            lock.release()


async def test_a_live_session_takes_more_mounts_and_refuses_fewer(
    e2b_server: E2BSite, tmp_path: Path, data_dir: Path
) -> None:
    root = tmp_path / "mounts"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "a.txt").write_text("a")
    (root / "b" / "b.txt").write_text("b")
    first = {"host_path": str(root / "a"), "mount_path": "/opt/a", "mode": "ro"}
    second = {"host_path": str(root / "b"), "mount_path": "/opt/b", "mode": "rw"}
    with e2b_daemon(e2b_server, data_dir, "--allow-mount-root", str(root)) as daemon:
        async with connect(daemon) as peer:
            one = await peer.call("box_exec", {"session_id": "m", "cmd": "cat /opt/a/a.txt", "extra_mounts": [first]})
            assert one["stdout"] == "a"
            both = {"session_id": "m", "cmd": "cat /opt/a/a.txt /opt/b/b.txt; echo more > /opt/b/c.txt"}
            two = await peer.call("box_exec", {**both, "extra_mounts": [first, second]}, timeout=120)
            assert two["stdout"] == "ab" and (root / "b" / "c.txt").read_text() == "more\n"
            with pytest.raises(BoxSessionConflictError, match="cannot change the mounts"):
                await peer.call("box_exec", {"session_id": "m", "cmd": "true", "extra_mounts": [second]})
