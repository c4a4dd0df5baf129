"""Skills mounted read-only into sessions at /workspace/.skills/<name>, and added live."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from boxruntime.errors import BoxSessionConflictError
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect, eventually, start_daemon

pytestmark = [pytest.mark.anyio]


async def make_skill(peer: Peer, name: str, script: str) -> Path:
    created = await peer.call(
        "box_create_skill", {"skill": {"name": name, "description": f"{name} skill", "instructions": "Run run.sh"}}
    )
    await peer.call("box_write_skill_file", {"name": name, "path": "run.sh", "content": script})
    return Path(created["skill"]["package_root"])


def skill_mount(package: Path, name: str) -> dict[str, str]:
    return {"host_path": str(package), "mount_path": f"/workspace/.skills/{name}", "mode": "ro"}


async def run(peer: Peer, cmd: str, mounts: list[dict[str, str]], session: str = "sk") -> dict[str, Any]:
    return await peer.call("box_exec", {"session_id": session, "cmd": cmd, "extra_mounts": mounts}, timeout=120)


@pytest.mark.docker
async def test_skills_run_read_only_and_arrive_in_a_live_session(container_daemon: Daemon) -> None:
    daemon = container_daemon
    async with connect(daemon) as peer:
        hello = await make_skill(peer, "hello", "echo hello from the skill")
        first = [skill_mount(hello, "hello")]
        ran = await run(peer, "sh /workspace/.skills/hello/run.sh; touch /workspace/.skills/hello/x", first)
        assert ran["stdout"] == "hello from the skill" and ran["exit_code"] != 0
        assert "Read-only file system" in ran["stderr"] or "Permission denied" in ran["stderr"]
        container = (await peer.call("box_get_session", {"session_id": "sk"}))["backend_session_id"]

        later = await make_skill(peer, "later", "echo added while running")
        both = [*first, skill_mount(later, "later")]
        added = await run(peer, "sh /workspace/.skills/later/run.sh; ls /workspace/.skills", both)
        assert added["stdout"] == "added while running\nhello\nlater"
        # Read-only by the mount itself, not just by file permissions, including the live one:
        # a writable copy must never reach the sandbox, even for a moment.
        if daemon.extra["backend"] == "docker":
            flags = await run(peer, r"awk '$5 ~ /\.skills\/(hello|later)$/ {print $5, $6}' /proc/self/mountinfo", both)
            lines = sorted(flags["stdout"].splitlines())
            assert [line.split()[0] for line in lines] == ["/workspace/.skills/hello", "/workspace/.skills/later"]
            assert all(line.split()[1].split(",")[0] == "ro" for line in lines), lines
        else:  # gVisor's mount table does not show the host's mounts below a bind mount
            wrote = await run(peer, "touch /workspace/.skills/later/x", both)
            assert wrote["exit_code"] != 0 and not (later / "x").exists(), wrote
        info = await peer.call("box_get_session", {"session_id": "sk"})
        assert info["backend_session_id"] == container  # same sandbox, not recreated
        assert len(info["extra_mounts"]) == 2

        other = daemon.data_dir / "plain"
        other.mkdir()
        with pytest.raises(BoxSessionConflictError, match=r"only skills under /workspace/\.skills"):
            await run(peer, "true", [*both, {"host_path": str(other), "mount_path": "/data", "mode": "ro"}])

        await peer.call("box_delete_session", {"session_id": "sk"})
    # The packages were mounted, never owned: removing the session left them intact.
    assert (hello / "run.sh").read_text() == "echo hello from the skill"
    assert (later / "SKILL.md").exists()


@pytest.mark.docker
async def test_a_crashed_daemons_skill_mounts_are_cleaned_without_touching_skills(
    docker_engine: Any, data_dir: Path
) -> None:
    first = start_daemon(data_dir, "--backend", "docker")
    async with connect(first) as peer:
        package = await make_skill(peer, "keepme", "echo kept")
        assert (await run(peer, "sh /workspace/.skills/keepme/run.sh", [skill_mount(package, "keepme")]))[
            "stdout"
        ] == "kept"
    dead = first.instance_id()
    first.stop(signal.SIGKILL)
    successor = start_daemon(data_dir, "--backend", "docker")
    try:
        await eventually(lambda: not (data_dir / "sessions" / dead).exists())
        assert (package / "run.sh").read_text() == "echo kept"
    finally:
        successor.stop()


async def test_nsjail_mounts_skills_and_says_it_cannot_add_them_live(nsjail_daemon: Daemon) -> None:
    async with connect(nsjail_daemon) as peer:
        one = await make_skill(peer, "one", "echo one")
        two = await make_skill(peer, "two", "echo two")
        mounts = [skill_mount(one, "one")]
        assert (await run(peer, "sh /workspace/.skills/one/run.sh", mounts))["stdout"] == "one"
        with pytest.raises(BoxSessionConflictError, match="cannot change the mounts of a running session"):
            await run(peer, "true", [*mounts, skill_mount(two, "two")])
        await peer.call("box_delete_session", {"session_id": "sk"})
    assert (one / "run.sh").read_text() == "echo one"
