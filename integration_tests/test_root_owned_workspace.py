"""LangBot's tenant workspace, created and written by root, used by a sandbox that is not root:
real Docker and nsjail sandboxes through the real daemon. LangBot's side is done with LangBot
4.11.2's own calls and modes (tests.langbot_host_fs), as root, the way LangBot runs."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from boxruntime.backends.common import posix_acl
from boxruntime.backends.common.posix_acl import UNDEFINED_ID, Tag
from boxruntime.errors import BoxValidationError
from boxruntime.ids import safe_key
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect, eventually, sandboxes_of, start_daemon
from tests import langbot_host_fs as langbot

pytestmark = [pytest.mark.anyio]

NAMESPACE = "ws-00112233445566778899aabb"


@pytest.fixture(params=["docker", "nsjail"])
def box(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[Daemon]:
    backend = str(request.param)
    if backend == "docker":
        request.getfixturevalue("docker_engine")
    daemon = start_daemon(data_dir, "--backend", backend)
    try:
        yield daemon
    finally:
        daemon.stop()
        assert sandboxes_of(backend, data_dir) == []


async def run(peer: Peer, cmd: str, host_path: Path, **fields: Any) -> dict[str, Any]:
    request = {"session_id": "shared", "cmd": cmd, "host_path": str(host_path), **fields}
    return await peer.call("box_exec", request, timeout=180)


async def ok(peer: Peer, cmd: str, host_path: Path, **fields: Any) -> str:
    result = await run(peer, cmd, host_path, **fields)
    assert result["exit_code"] == 0, result
    return str(result["stdout"])


def root_owned_setuid_files(root: Path) -> list[Path]:
    found = []
    for directory, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            if st.st_uid == 0 and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(Path(directory, name))
    return found


async def test_langbot_tenant_workspace_made_by_root(box: Daemon, tmp_path: Path) -> None:
    tenant = langbot.tenant_workspace(box.data_dir / "box", NAMESPACE)
    assert tenant.stat().st_uid == 0 and tenant.stat().st_mode & 0o777 == 0o755
    async with connect(box) as peer:
        # The failure this fixes: "workdir /workspace/sub cannot be created: Permission denied".
        assert await ok(peer, "echo made > f; id -u", tenant, workdir="/workspace/sub") == "1000"
        made = tenant / "sub" / "f"
        assert made.read_text() == "made\n" and made.stat().st_uid == 1000
        info = await peer.call("box_get_session", {"session_id": "shared"})
        assert any("POSIX ACL" in note for note in info["notes"]), info["notes"]

        # Inbound attachments: LangBot writes inbox/<scope>/ as 0700 and 0600.
        langbot.write_inbox(tenant, "run-1", {"photo.txt": b"attached by LangBot"})
        assert await ok(peer, "cat /workspace/inbox/run-1/photo.txt", tenant) == "attached by LangBot"
        photo = posix_acl.decode(os.getxattr(tenant / "inbox" / "run-1" / "photo.txt", posix_acl.ACCESS))
        others = posix_acl.effective(photo)
        assert others[(Tag.GROUP_OBJ, UNDEFINED_ID)] == 0 and others[(Tag.OTHER, UNDEFINED_ID)] == 0

        # Outbound files: written by the sandbox, read and cleared by LangBot.
        langbot.reset_outbox(tenant, "run-1")
        await ok(peer, "echo result > /workspace/outbox/run-1/report.txt", tenant)
        report = tenant / "outbox" / "run-1" / "report.txt"
        assert report.stat().st_uid == 1000
        assert langbot.read_outbox(tenant, "run-1") == {"report.txt": b"result\n"}
        langbot.reset_outbox(tenant, "run-1")
        assert not report.exists()
        await ok(peer, "echo next > /workspace/outbox/run-1/again.txt", tenant)

        # An MCP server staged by LangBot after the session exists (copytree of a 0755 tree):
        # its install exec makes a venv in the cwd, and the server process runs there.
        cwd = langbot.stage_mcp_server(tenant, "srv-1", langbot.mcp_server_source(tmp_path / "server"))
        install = "python3 -m venv --without-pip .venv && mkdir -p .langbot .tmp && touch src/tool/built.py && ls"
        assert "pyproject.toml" in await ok(peer, install, tenant, workdir=cwd)
        server = ["-c", "touch started-here; exec sleep 600"]
        spec = {"process_id": "srv-1", "command": "sh", "args": server, "cwd": cwd}
        await peer.call("box_start_managed_process", {"session_id": "shared", "spec": spec}, timeout=60)
        started = tenant / ".mcp" / "srv-1" / "workspace" / "started-here"
        await eventually(started.exists)
        assert started.stat().st_uid == 1000
        await peer.call("box_stop_managed_process", {"session_id": "shared", "process_id": "srv-1"}, timeout=60)

        # Never a setuid root file: the sandbox can set the bit only on its own files.
        denied = await run(peer, "chmod u+s /workspace/inbox/run-1/photo.txt", tenant)
        assert denied["exit_code"] != 0 and "Operation not permitted" in denied["stderr"]
        await ok(peer, "cp /bin/true mine && chmod u+s mine", tenant)
        assert (tenant / "mine").stat().st_uid == 1000
        assert root_owned_setuid_files(tenant) == []


async def test_a_read_only_root_owned_host_path_stays_read_only(box: Daemon) -> None:
    shared = box.data_dir / "readonly"
    shared.mkdir(mode=0o755)
    (shared / "notes.txt").write_text("from the host")
    async with connect(box) as peer:
        result = await run(peer, "cat notes.txt; touch x", shared, host_path_mode="ro")
        assert result["stdout"] == "from the host" and "Read-only file system" in result["stderr"]
    assert os.listxattr(shared) == [] and sorted(os.listdir(shared)) == ["notes.txt"]


@pytest.fixture
def ramfs(data_dir: Path) -> Iterator[Path]:
    """A filesystem with no extended attributes, hence no ACLs."""
    target = data_dir / "ramfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "-o", "mode=755", "ramfs", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


async def test_a_workspace_without_acl_support_is_refused_clearly(box: Daemon, ramfs: Path) -> None:
    async with connect(box) as peer:
        with pytest.raises(BoxValidationError, match=r"does not support POSIX ACLs: mount it with ACL support"):
            await run(peer, "touch x", ramfs)
        with pytest.raises(Exception, match="not found"):
            await peer.call("box_get_session", {"session_id": "shared"})
    assert list(box.data_dir.glob(f"sessions/*/{safe_key('shared')}")) == []  # no state left behind
