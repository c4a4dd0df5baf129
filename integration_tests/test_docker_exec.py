"""Exec semantics, isolation and limits on the real Docker engine, through the real daemon.

``container_daemon`` runs a test on both container runtimes: runc (the docker backend) and
runsc (the gvisor backend); integration_tests/test_gvisor.py has what differs under gVisor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from boxruntime.errors import BoxSessionNotFoundError, BoxValidationError
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def run(peer: Peer, cmd: str, session: str = "s1", **spec: Any) -> dict[str, Any]:
    return await peer.call("box_exec", {"session_id": session, "cmd": cmd, **spec}, timeout=180)


async def test_exec_basics(container_daemon: Daemon) -> None:
    async with connect(container_daemon) as peer:
        ok = await run(peer, "echo out; echo err >&2")
        assert (ok["status"], ok["exit_code"], ok["stdout"], ok["stderr"]) == ("completed", 0, "out", "err")
        assert ok["backend_name"] == container_daemon.extra["backend"] and ok["session_id"] == "s1"
        assert (await run(peer, "exit 3"))["exit_code"] == 3
        env = await run(peer, 'printf "%s|%s" "$GREETING" "$HOME"', env={"GREETING": "hi there"})
        assert env["stdout"] == "hi there|/tmp"
        wd = await run(peer, "pwd; touch made-here", workdir="/workspace/sub/dir")
        assert wd["stdout"] == "/workspace/sub/dir"
        assert (await run(peer, "ls /workspace/sub/dir"))["stdout"] == "made-here"


async def test_unmakeable_workdir_fails_clearly_and_runs_nothing(container_daemon: Daemon) -> None:
    async with connect(container_daemon) as peer:
        await run(peer, "true")
        with pytest.raises(BoxValidationError, match="workdir /usr/new cannot be created"):
            await run(peer, "touch /tmp/ran-anyway && echo ran", workdir="/usr/new")
        # LangBot ran half of such a command with exit 0; here nothing ran at all.
        assert (await run(peer, "ls /tmp"))["stdout"] == ""


async def test_long_command_and_large_output(container_daemon: Daemon) -> None:
    async with connect(container_daemon) as peer:
        payload = "x" * 300_000  # beyond MAX_ARG_STRLEN (128 KiB): no ARG_MAX limit
        result = await run(peer, f"printf %s {payload} | wc -c")
        assert result["stdout"] == "300000"
        big = await run(peer, "head -c 3000000 /dev/zero | tr '\\0' y")
        marker = f"\n... [raw output clipped at 1048576 bytes, {3000000 - 1048576} bytes discarded]"
        assert big["stdout"] == "y" * 1048576 + marker
        assert big["stdout_bytes"] == 3000000


async def test_binary_output_is_decoded_with_replacement(daemon: Daemon) -> None:
    async with connect(daemon) as peer:
        result = await run(peer, "printf 'a\\377b'")
        assert result["stdout"] == "a\ufffdb"


async def test_sandbox_is_hardened(container_daemon: Daemon) -> None:
    async with connect(container_daemon) as peer:
        ids = await run(peer, "id -u; id -g")
        assert ids["stdout"].split() == ["1000", "1000"]
        status = (await run(peer, "cat /proc/self/status"))["stdout"]
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        # gVisor has no CapAmb line; ambient capabilities are a subset of CapPrm there anyway.
        gvisor = container_daemon.extra["backend"] == "gvisor"
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd") + (() if gvisor else ("CapAmb",)):
            assert int(fields[cap], 16) == 0, f"{cap} = {fields[cap]}"
        if not gvisor:  # gVisor's status has no such line; the prctl below asks its kernel
            assert fields["NoNewPrivs"].strip() == "1"
        nnp = await run(peer, "python3 -c 'import ctypes; print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))'")
        assert nnp["stdout"] == "1"  # PR_GET_NO_NEW_PRIVS
        # runc checks the mount first, gVisor the directory's owner (root) first: either refuses.
        refusal = "Read-only file system" if container_daemon.extra["backend"] == "docker" else "Permission denied"
        for target in ("/usr/x", "/etc/x", "/x"):
            result = await run(peer, f"touch {target}")
            assert result["exit_code"] != 0 and refusal in result["stderr"], result
        mounts = (await run(peer, "cat /proc/mounts"))["stdout"].splitlines()
        root = [line.split() for line in mounts if line.split()[1] == "/"]
        assert root and "ro" in root[-1][3].split(","), mounts  # the kernel's own word: read-only
        for target in ("/run/boxruntime/x", "/opt/boxruntime/x", "/dev/x"):
            assert (await run(peer, f"touch {target}"))["exit_code"] != 0, target
        assert (await run(peer, "touch /workspace/ok /tmp/ok && echo yes"))["stdout"] == "yes"


async def test_network_is_off_unless_asked(daemon: Daemon) -> None:
    probe = (
        'python3 -c "import socket; s=socket.socket(); s.settimeout(3)\n'
        "try:\n s.connect(('192.0.2.1', 80)); print('connected')\n"
        "except OSError as e: print('refused', e.errno)\""
    )
    async with connect(daemon) as peer:
        assert (await run(peer, "ls /sys/class/net", session="off"))["stdout"] == "lo"
        assert (await run(peer, probe, session="off"))["stdout"].startswith("refused")
        on = await run(peer, "ls /sys/class/net", session="on", network="on")
        assert "eth0" in on["stdout"].split()


ZOMBIES = "for s in /proc/[0-9]*/stat; do read -r line < $s 2>/dev/null; case ${line##*) } in Z*) echo $s;; esac; done"


async def test_the_agent_reaps_orphans_as_init(container_daemon: Daemon) -> None:
    async with connect(container_daemon) as peer:
        # The subshell exits at once: its sleeps become orphans of PID 1 (the agent), then exit.
        assert (await run(peer, "(sleep 0.2 & sleep 0.3 &); echo left"))["stdout"] == "left"
        await anyio.sleep(0.5)
        # Reaped at once or on the agent's next periodic wake-up (at most 1 s later).
        for _ in range(20):
            zombies = (await run(peer, ZOMBIES))["stdout"]
            if not zombies:
                break
            await anyio.sleep(0.25)
        assert zombies == ""


async def test_timeout_kills_the_tree_and_keeps_the_session(container_daemon: Daemon) -> None:
    async with connect(container_daemon) as peer:
        await run(peer, "echo kept > /workspace/f; sleep 300 > /dev/null 2>&1 &")
        result = await run(peer, "sleep 600 & sleep 600 & echo started; sleep 600", timeout_sec=2)
        assert result["status"] == "timed_out" and result["exit_code"] is None
        assert result["end_reason"] == "timeout" and result["stdout"] == "started"
        after = await run(peer, "cat /workspace/f; cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
        assert after["stdout"].startswith("kept")
        # The timed-out command's children are gone; the earlier background job lives on.
        assert "sleep 600" not in after["stdout"] and "sleep 300" in after["stdout"]


async def test_pid_limit_stops_a_fork_flood(container_daemon: Daemon) -> None:
    flood = (
        'python3 -c "import os, time\nn = 0\nwhile n < 500:\n'
        " try:\n  pid = os.fork()\n except OSError:\n  break\n"
        ' if pid == 0:\n  time.sleep(3); os._exit(0)\n n += 1\nprint(n)"'
    )
    async with connect(container_daemon) as peer:
        forks = int((await run(peer, flood, session="flood", pids_limit=40))["stdout"])
        assert 0 < forks < 40
        # Other sessions stay responsive while the flood's children are still alive.
        assert (await run(peer, "echo fine", session="neighbour"))["stdout"] == "fine"


async def test_memory_hog_is_killed_and_reported(daemon: Daemon) -> None:
    async with connect(daemon) as peer:
        hog = await run(peer, "python3 -c 'b = bytearray(400 * 1024 * 1024); print(len(b))'", memory_mb=96)
        assert hog["exit_code"] == 137 and hog["end_reason"] == "oom" and hog["stdout"] == ""
        assert (await run(peer, "echo survived", memory_mb=96))["stdout"] == "survived"


async def test_tmp_and_private_workspace_are_size_bounded(container_daemon: Daemon) -> None:
    fill = "dd if=/dev/zero of={} bs=1M count=200 2>&1; wc -c < {}"
    async with connect(container_daemon) as peer:
        tmp = await run(peer, fill.format("/tmp/big", "/tmp/big"), session="q", workspace_quota_mb=32)
        assert "No space left on device" in tmp["stdout"]
        assert int(tmp["stdout"].split()[-1]) <= 64 * 1024 * 1024
        ws = await run(peer, fill.format("/workspace/big", "/workspace/big"), session="q", workspace_quota_mb=32)
        assert "No space left on device" in ws["stdout"]
        assert int(ws["stdout"].split()[-1]) <= 32 * 1024 * 1024
        info = await peer.call("box_get_session", {"session_id": "q"})
        assert info["workspace_quota_enforced"] is True and info["notes"]


async def test_host_mounts_are_checked_and_work(container_daemon: Daemon, tmp_path: Path) -> None:
    shared = container_daemon.data_dir / "shared"
    shared.mkdir()
    (shared / "from-host.txt").write_text("hello from host")
    os.chown(shared, 1234, 1234)  # a bot's own directory: the sandbox runs as its owner
    outside = tmp_path / "outside"
    outside.mkdir()
    async with connect(container_daemon) as peer:
        spec = {"host_path": str(shared), "workspace_quota_mb": 10}
        result = await run(peer, "cat from-host.txt; echo back > from-box.txt", session="m", **spec)
        assert result["stdout"] == "hello from host"
        assert (shared / "from-box.txt").read_text() == "back\n"
        assert (shared / "from-box.txt").stat().st_uid == 1234
        info = await peer.call("box_get_session", {"session_id": "m"})
        assert info["workspace_quota_enforced"] is False
        assert any("not enforced" in note for note in info["notes"])
        assert any("runs as 1234:1234" in note for note in info["notes"])
        created = container_daemon.data_dir / "new" / "ws"
        made = await run(peer, "echo made > f && cat f", session="created", host_path=str(created))
        assert made["stdout"] == "made" and created.stat().st_uid == 1000
        gvisor = container_daemon.extra["backend"] == "gvisor"
        refusal = "Permission denied"
        rooted = container_daemon.data_dir / "rooted"
        rooted.mkdir(mode=0o755)
        if container_daemon.extra["backend"] == "docker":
            written = await run(peer, "touch x && id -u", session="rooted", host_path=str(rooted))
            assert written["stdout"] == "1000" and (rooted / "x").stat().st_uid == 1000  # test_root_owned_workspace
            info = await peer.call("box_get_session", {"session_id": "rooted"})
            assert any("writes it through a POSIX ACL entry" in note for note in info["notes"])
        else:  # gVisor ignores POSIX ACLs: refused at once, and nothing was made
            with pytest.raises(BoxValidationError, match="root owns it, and gVisor checks permissions by mode"):
                await run(peer, "touch x", session="rooted", host_path=str(rooted))
            assert list(rooted.iterdir()) == []
            with pytest.raises(BoxSessionNotFoundError):
                await peer.call("box_get_session", {"session_id": "rooted"})
        for bad in ({"host_path": str(outside)}, {"host_path": "/etc"}, {"host_path": "/"}):
            with pytest.raises(BoxValidationError):
                await run(peer, "true", session="bad", **bad)
        extra = [{"host_path": "/etc", "mount_path": "/data", "mode": "ro"}]
        with pytest.raises(BoxValidationError, match=r"extra_mounts\[0\]"):
            await run(peer, "true", session="bad", extra_mounts=extra)
        ro = [{"host_path": str(shared), "mount_path": "/data", "mode": "ro"}]
        read = await run(peer, "cat /data/from-host.txt; touch /data/x", session="ro", extra_mounts=ro)
        assert read["stdout"] == "hello from host" and read["exit_code"] != 0 and not (shared / "x").exists()
        # gVisor checks the owner (1234, not the sandbox user) before the mount: test_gvisor has
        # a directory that only the read-only mount protects.
        assert (refusal if gvisor else "Read-only file system") in read["stderr"]
        with pytest.raises(BoxSessionNotFoundError):
            await peer.call("box_get_session", {"session_id": "bad"})


async def test_parallel_creation_of_many_sessions(daemon: Daemon) -> None:
    results: dict[str, str] = {}

    async def one(peer: Peer, name: str) -> None:
        results[name] = (await run(peer, "hostname", session=name))["stdout"]

    async with connect(daemon) as peer:
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, peer, f"par-{i}")
        assert len(results) == 8 and len(set(results.values())) == 8
        sessions = (await peer.call("box_get_sessions", {}))["sessions"]
        assert sorted(s["session_id"] for s in sessions) == sorted(results)


async def test_many_concurrent_commands_in_one_session(container_daemon: Daemon) -> None:
    outputs: dict[int, str] = {}

    async def one(peer: Peer, i: int) -> None:
        outputs[i] = (await run(peer, f"sleep 0.5; echo {i}"))["stdout"]

    async with connect(container_daemon) as peer:
        await run(peer, "true")
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, peer, i)
    assert outputs == {i: str(i) for i in range(50)}
