"""The warm pool on real sandboxes: hits, misses, refill, and cleanup."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from boxruntime.ids import safe_key
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect, sandboxes_of, start_daemon
from tests import langbot_host_fs as langbot

pytestmark = [pytest.mark.anyio]


@pytest.fixture(params=["docker", "gvisor", "nsjail", "host"])
def pooled(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[Daemon]:
    backend = str(request.param)
    if backend in ("docker", "gvisor"):
        request.getfixturevalue("docker_engine")
    token = "p" * 40 if backend == "host" else None  # never served over WebSocket without one
    daemon = start_daemon(data_dir, "--backend", backend, env={"BOXRUNTIME_POOL_SIZE": "2"}, token=token)
    daemon.extra["backend"] = backend
    try:
        yield daemon
    finally:
        daemon.stop()
        assert sandboxes_of(backend, data_dir) == [], "pool sandboxes left behind"


async def pool(peer: Peer) -> dict[str, Any]:
    return dict((await peer.call("box_status", {}))["pool"])


async def wait_ready(peer: Peer, ready: int) -> None:
    status: dict[str, Any] = {}

    async def check() -> bool:
        status.update(await pool(peer))
        return bool(status["ready"] == ready)

    for _ in range(600):
        if await check():
            return
        await anyio.sleep(0.1)
    raise AssertionError(f"pool never reached {ready} ready sandboxes: {status}")


async def test_hit_miss_and_refill(pooled: Daemon) -> None:
    backend = pooled.extra["backend"]
    async with connect(pooled) as peer:
        await wait_ready(peer, 2)
        assert len(sandboxes_of(backend, pooled.data_dir)) == 2
        hit = await peer.call("box_exec", {"session_id": "fast", "cmd": "echo from the pool > f; cat f"}, timeout=60)
        assert hit["stdout"] == "from the pool"
        info = await peer.call("box_get_session", {"session_id": "fast"})
        assert "-pool-" in info["backend_session_id"]
        assert (await pool(peer))["hits"] == 1
        # The workspace now belongs to the session: on disk under the session's own key.
        assert (pooled.data_dir / "workspaces" / safe_key("fast") / "files" / "f").read_text() == "from the pool\n"
        await wait_ready(peer, 2)  # refilled
        assert len(sandboxes_of(backend, pooled.data_dir)) == 3

        miss = await peer.call("box_exec", {"session_id": "small", "cmd": "echo fresh", "memory_mb": 256}, timeout=60)
        assert miss["stdout"] == "fresh"
        status = await pool(peer)
        assert (status["hits"], status["misses"], status["ready"]) == (1, 1, 2)
        small = await peer.call("box_get_session", {"session_id": "small"})
        assert "-pool-" not in small["backend_session_id"]


async def test_kept_workspace_is_never_shadowed_by_a_pooled_one(data_dir: Path, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue("docker_engine")
    first = start_daemon(data_dir, "--backend", "docker")
    try:
        async with connect(first) as peer:
            await peer.call(
                "box_exec", {"session_id": "kept", "cmd": "echo old > note", "persistent": True}, timeout=60
            )
    finally:
        first.stop()  # containers go, the workspace's files stay
    second = start_daemon(data_dir, "--backend", "docker", env={"BOXRUNTIME_POOL_SIZE": "1"})
    try:
        async with connect(second) as peer:
            await wait_ready(peer, 1)
            again = await peer.call(
                "box_exec", {"session_id": "kept", "cmd": "cat note", "persistent": True}, timeout=60
            )
            assert again["stdout"] == "old"
            assert (await pool(peer))["misses"] == 1
    finally:
        second.stop()
    assert sandboxes_of("docker", data_dir) == []


def mount_points_under(directory: Path) -> list[str]:
    root = str(directory.resolve())
    with open("/proc/self/mountinfo") as info:
        return [line.split()[4] for line in info if line.split()[4].startswith(root + "/")]


async def test_a_pooled_sandbox_takes_a_host_directory_workspace(
    data_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """LangBot's usual shape (a host directory at /workspace) is a pool hit: the directory is
    bound into the running sandbox, read-only when asked, and left intact when it goes."""
    request.getfixturevalue("docker_engine")
    mounts = tmp_path / "mounts"
    writable = mounts / "rw"
    writable.mkdir(parents=True)
    (writable / "seed").write_text("from the host\n")
    os.chown(writable, 1000, 1000)
    frozen = mounts / "ro"
    frozen.mkdir()
    frozen.chmod(0o777)  # only the mount itself can refuse a write here
    (frozen / "keep").write_text("untouched\n")
    env = {"BOXRUNTIME_POOL_SIZE": "2"}
    daemon = start_daemon(data_dir, "--backend", "docker", "--allow-mount-root", str(mounts), env=env)
    try:
        async with connect(daemon) as peer:
            await wait_ready(peer, 2)
            rw = {"session_id": "host-rw", "host_path": str(writable), "host_path_mode": "rw"}
            ran = await peer.call("box_exec", {**rw, "cmd": "cat seed; echo made > out; id -u"}, timeout=60)
            assert ran["stdout"] == "from the host\n1000" and ran["exit_code"] == 0
            assert (writable / "out").read_text() == "made\n"
            assert (writable / "out").stat().st_uid == 1000
            info = await peer.call("box_get_session", {"session_id": "host-rw"})
            assert "-pool-" in info["backend_session_id"]
            # The pooled sandbox's own private workspace went; the session has none on disk.
            assert not (data_dir / "workspaces" / safe_key("host-rw")).exists()

            ro = {"session_id": "host-ro", "host_path": str(frozen), "host_path_mode": "ro"}
            tried = await peer.call("box_exec", {**ro, "cmd": "cat keep; touch new"}, timeout=60)
            assert tried["stdout"] == "untouched" and tried["exit_code"] != 0
            assert "Read-only file system" in tried["stderr"]
            assert not (frozen / "new").exists()
            status = await pool(peer)
            assert (status["hits"], status["misses"]) == (2, 0)

            # A directory root made (LangBot's tenant workspace) is written through an ACL entry.
            tenant = langbot.tenant_workspace(mounts, "ws-00112233445566778899aabb")
            await wait_ready(peer, 2)
            rooted = {"session_id": "host-root", "host_path": str(tenant)}
            await peer.call("box_exec", {**rooted, "cmd": "echo made > out", "workdir": "/workspace/sub"}, timeout=60)
            assert (tenant / "sub" / "out").stat().st_uid == 1000
            langbot.write_inbox(tenant, "run-1", {"in.txt": b"attached"})
            read = await peer.call("box_exec", {**rooted, "cmd": "cat inbox/run-1/in.txt"}, timeout=60)
            assert read["stdout"] == "attached"
            assert (await pool(peer))["hits"] == 3

            for session in ("host-rw", "host-ro", "host-root"):
                await peer.call("box_delete_session", {"session_id": session})
            # Unmounted, never deleted through: the host directories keep every file.
            assert (writable / "seed").read_text() == "from the host\n"
            assert (writable / "out").exists() and (frozen / "keep").exists()
            assert not [p for p in mount_points_under(data_dir) if "host-r" in p]
    finally:
        daemon.stop()
    assert sandboxes_of("docker", data_dir) == []
    assert mount_points_under(data_dir) == [], "mounts left behind"
