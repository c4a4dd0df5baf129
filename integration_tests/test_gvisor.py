"""What is particular to the gvisor backend (Docker with runsc), on the real engine.

What it shares with the docker backend runs on both in test_docker_exec, test_skill_mounts,
test_managed_processes and test_pool (``container_daemon`` and the backend parameters there).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest

from boxruntime.backends.gvisor.backend import MEMORY_HEADROOM_MB, PIDS_BASE, PIDS_PER_PROCESS
from boxruntime.errors import BoxSandboxError, BoxSessionNotFoundError, BoxValidationError
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect, daemon_env

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def argv0(pid: str) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


async def run(peer: Peer, cmd: str, session: str = "g", **spec: Any) -> dict[str, Any]:
    return await peer.call("box_exec", {"session_id": session, "cmd": cmd, **spec}, timeout=180)


async def test_the_session_runs_on_gvisors_kernel(gvisor_daemon: Daemon) -> None:
    async with connect(gvisor_daemon) as peer:
        kernel = await run(peer, "uname -r; dmesg | head -1")
        release, first_message = kernel["stdout"].splitlines()
        assert release != platform.release()  # not the host's kernel
        assert "Starting gVisor" in first_message
        info = await peer.call("box_get_backend_info", {})
        assert info["name"] == "gvisor" and info["available"] is True
        limits = info["enforced_limits"]
        assert "runsc" in limits["kernel"] and "network=on is refused" in limits["network"]
        assert "ends the whole sandbox" in limits["memory_mb"]
        # ls and stat work: the preloaded shim drops the statx flag this runsc refuses.
        listing = await run(peer, "touch /tmp/f && ls -l /tmp/f && stat -c %s /tmp/f")
        assert listing["exit_code"] == 0 and listing["stdout"].endswith("\n0"), listing


async def test_sessions_started_at_once_on_a_new_daemon_all_get_the_shim(gvisor_daemon: Daemon) -> None:
    """The first sessions of a daemon build the statx shim: started together, they build it
    once (they used to share a staging directory and fail each other's compiler)."""
    async with connect(gvisor_daemon) as peer, anyio.create_task_group() as tg:
        for index in range(4):
            tg.start_soon(run, peer, "touch /tmp/f && stat -c %s /tmp/f", f"at-once-{index}")
    async with connect(gvisor_daemon) as peer:
        listed = await peer.call("box_get_sessions", {})
        assert sorted(s["session_id"] for s in listed["sessions"]) == [f"at-once-{i}" for i in range(4)]
        for index in range(4):
            assert (await run(peer, "stat -c %s /tmp/f", f"at-once-{index}"))["stdout"] == "0"


def test_doctor_names_gvisor_and_why_it_is_unavailable(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    def doctor(**env: str) -> str:
        argv = [sys.executable, "-m", "boxruntime", "doctor", "--data-dir", str(data_dir)]
        done = subprocess.run(argv, capture_output=True, text=True, env=daemon_env(data_dir, **env), timeout=120)
        return done.stdout

    ready = doctor()
    assert "gvisor  available" in ready and "kernel: gVisor (runtime runsc" in ready, ready
    missing = doctor(BOXRUNTIME_GVISOR_RUNTIME="no-such-runtime")
    assert "gvisor  unavailable the Docker engine has no runtime named 'no-such-runtime'" in missing, missing
    assert "apt-get install runsc" in missing


async def test_limits_sit_on_the_cgroups_that_hold_gvisor(gvisor_daemon: Daemon) -> None:
    """cpus, memory and pids are the host's cgroup limits, on the cgroups gVisor's own
    processes live in; pids are counted inside by gVisor's kernel (RLIMIT_NPROC)."""
    async with connect(gvisor_daemon) as peer:
        spec = {"cpus": 0.5, "memory_mb": 200, "pids_limit": 50}
        limit = "python3 -c 'import resource; print(resource.getrlimit(resource.RLIMIT_NPROC))'"
        nproc = await run(peer, limit, **spec)
        name = (await peer.call("box_get_session", {"session_id": "g"}))["backend_session_id"]
        assert nproc["stdout"] == "(50, 50)"
    client = docker.from_env()
    try:
        container = client.containers.get(name)
        assert container.attrs["HostConfig"]["Runtime"] == "runsc"
        cgroups = Path("/sys/fs/cgroup")
        procs = (cgroups / "pids" / "docker" / str(container.id) / "cgroup.procs").read_text().split()
        names = {argv0(pid) for pid in procs}
        assert {"runsc-sandbox", "runsc-gofer"} <= names, names  # gVisor itself is in the cgroup
        group = str(container.id)
        assert (cgroups / "cpu" / "docker" / group / "cpu.cfs_quota_us").read_text().strip() == "50000"
        memory = int((cgroups / "memory" / "docker" / group / "memory.limit_in_bytes").read_text())
        assert memory == (200 + MEMORY_HEADROOM_MB) * 1024 * 1024
        pids = int((cgroups / "pids" / "docker" / group / "pids.max").read_text())
        assert pids == 50 * PIDS_PER_PROCESS + PIDS_BASE
    finally:
        client.close()


async def test_network_on_is_refused_and_off_has_no_route(gvisor_daemon: Daemon) -> None:
    probe = (
        'python3 -c "import socket; s=socket.socket(); s.settimeout(3)\n'
        "try:\n s.connect(('192.0.2.1', 80)); print('connected')\n"
        "except OSError as e: print('refused', e.errno)\""
    )
    async with connect(gvisor_daemon) as peer:
        with pytest.raises(BoxValidationError, match="registered with --network=none"):
            await run(peer, "true", session="on", network="on")
        with pytest.raises(BoxSessionNotFoundError):
            await peer.call("box_get_session", {"session_id": "on"})
        assert (await run(peer, probe, session="off"))["stdout"].startswith("refused")


async def test_a_read_only_mount_refuses_writes_that_permissions_allow(gvisor_daemon: Daemon) -> None:
    shared = gvisor_daemon.data_dir / "open"
    shared.mkdir()
    shared.chmod(0o777)  # only the mount itself can refuse a write here
    async with connect(gvisor_daemon) as peer:
        mounts = [{"host_path": str(shared), "mount_path": "/data", "mode": "ro"}]
        tried = await run(peer, "touch /data/x", extra_mounts=mounts)
        assert tried["exit_code"] != 0 and "Read-only file system" in tried["stderr"]
        assert not (shared / "x").exists()


async def test_running_out_of_memory_ends_the_sandbox_and_says_so(gvisor_daemon: Daemon) -> None:
    """gVisor has no OOM killer inside: the host's memory cgroup ends the sandbox as a whole.
    The command gets an error that says so, and the next one gets a new sandbox."""
    async with connect(gvisor_daemon) as peer:
        await run(peer, "echo kept > /workspace/f", memory_mb=64)
        before = (await peer.call("box_get_session", {"session_id": "g"}))["backend_session_id"]
        hog = f"python3 -c 'b = bytearray({64 + MEMORY_HEADROOM_MB + 200} * 1024 * 1024)'"
        with pytest.raises(BoxSandboxError, match="ran out of memory and was ended as a whole"):
            await run(peer, hog, memory_mb=64)
        after = await run(peer, "echo new sandbox", memory_mb=64)
        assert after["stdout"] == "new sandbox"
        again = (await peer.call("box_get_session", {"session_id": "g"}))["backend_session_id"]
        assert again == before  # the same name: a new container for the same session
