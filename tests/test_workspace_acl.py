"""The sandbox user's ACL on a root-owned host workspace, on real files: LangBot's writes done
as LangBot does them (as root, this test's user), the sandbox's side as uid 1000 in a child."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from boxruntime.backends.common import posix_acl, workspace_acl
from boxruntime.backends.common.posix_acl import UNDEFINED_ID, Tag
from boxruntime.backends.common.workspace import for_host_workspace
from boxruntime.backends.common.workspace_acl import WorkspaceAcl
from boxruntime.errors import BoxValidationError
from boxruntime.security import ResolvedMount
from tests import langbot_host_fs as langbot

SANDBOX = 1000
LATER = 10**9  # a clock one second ahead: what a pass sees once the last change is old


def as_user(uid: int, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", script], user=uid, group=uid, extra_groups=[], capture_output=True, text=True, cwd="/"
    )


def sandbox(script: str) -> str:
    done = as_user(SANDBOX, script)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def sandbox_fails(script: str) -> str:
    done = as_user(SANDBOX, script)
    assert done.returncode != 0, done.stdout
    return done.stderr


@pytest.fixture
def default_workspace() -> Iterator[Path]:
    """LangBot's default workspace, somewhere uid 1000 can walk to (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="boxruntime-acl-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def tenant(default_workspace: Path) -> Iterator[tuple[Path, WorkspaceAcl]]:
    root = langbot.tenant_workspace(default_workspace, "ws-0123456789abcdef01234567")
    notes: list[str] = []
    acl = for_host_workspace(ResolvedMount(str(root), "/workspace", False), SANDBOX, SANDBOX, notes)
    assert acl is not None and "POSIX ACL" in notes[0]
    yield root, acl
    acl.close()


def settle(acl: WorkspaceAcl, directory: str = "/workspace") -> None:
    if acl.dirty(directory):
        acl.refresh(directory)


def test_the_root_is_writable_and_what_the_sandbox_makes_stays_its_own(tenant: tuple[Path, WorkspaceAcl]) -> None:
    root, _ = tenant
    assert root.stat().st_uid == 0 and root.stat().st_mode & 0o7777 == 0o775  # group bits now show the mask
    assert sandbox(f"mkdir {root}/sub && echo data > {root}/sub/f && stat -c %u {root}/sub/f") == str(SANDBOX)
    assert (root / "sub" / "f").read_text() == "data\n"
    # LangBot (root) creates directories later: they inherit the entry, no pass needed.
    os.makedirs(root / "later" / "deeper")
    assert sandbox(f"touch {root}/later/deeper/x && echo ok") == "ok"
    # Nobody else gained anything: another user still has only what "other" had (r-x).
    assert as_user(1234, f"touch {root}/y").returncode != 0
    shutil.rmtree(root / "sub")  # and LangBot removes what the sandbox made


def test_langbot_inbox_files_become_readable_before_the_next_command(tenant: tuple[Path, WorkspaceAcl]) -> None:
    root, acl = tenant
    langbot.write_inbox(root, "run-1", {"photo.txt": b"attached"})
    assert "Permission denied" in sandbox_fails(f"cat {root}/inbox/run-1/photo.txt")
    assert acl.dirty("/workspace")
    acl.refresh("/workspace")
    assert sandbox(f"cat {root}/inbox/run-1/photo.txt") == "attached"
    # The 0700/0600 LangBot chose still keeps everyone else out.
    for path in (root / "inbox", root / "inbox" / "run-1", root / "inbox" / "run-1" / "photo.txt"):
        acl_now = posix_acl.effective(posix_acl.decode(os.getxattr(path, posix_acl.ACCESS)))
        assert acl_now[(Tag.GROUP_OBJ, UNDEFINED_ID)] == 0 and acl_now[(Tag.OTHER, UNDEFINED_ID)] == 0
    assert as_user(1234, f"cat {root}/inbox/run-1/photo.txt").returncode != 0
    # The same scope written again (LangBot recreates it) is found again.
    settle(acl)
    langbot.write_inbox(root, "run-1", {"second.txt": b"again"})
    settle(acl)
    assert sandbox(f"cat {root}/inbox/run-1/second.txt") == "again"


def test_langbot_outbox_round_trip(tenant: tuple[Path, WorkspaceAcl]) -> None:
    root, acl = tenant
    langbot.reset_outbox(root, "run-1")
    settle(acl)
    sandbox(f"echo result > {root}/outbox/run-1/report.txt")
    assert (root / "outbox" / "run-1" / "report.txt").stat().st_uid == SANDBOX
    assert langbot.read_outbox(root, "run-1") == {"report.txt": b"result\n"}
    langbot.reset_outbox(root, "run-1")  # LangBot clears it after collecting
    assert not (root / "outbox" / "run-1" / "report.txt").exists()
    settle(acl)
    sandbox(f"echo next > {root}/outbox/run-1/again.txt")


def test_the_mcp_server_cwd_copied_by_copytree_is_writable(tenant: tuple[Path, WorkspaceAcl], tmp_path: Path) -> None:
    root, acl = tenant
    cwd = langbot.stage_mcp_server(root, "srv-1", langbot.mcp_server_source(tmp_path / "server"))
    staged = root / ".mcp" / "srv-1" / "workspace"
    assert "Permission denied" in sandbox_fails(f"mkdir {staged}/.venv")
    assert acl.dirty(cwd)
    acl.refresh(cwd)
    sandbox(f"mkdir {staged}/.venv {staged}/build && touch {staged}/src/tool.egg-info && cat {staged}/pyproject.toml")
    # A restart copies the tree again into the same directory, keeping the sandbox's .venv.
    settle(acl, cwd)
    langbot.stage_mcp_server(root, "srv-1", tmp_path / "server")
    settle(acl, cwd)
    sandbox(f"touch {staged}/src/tool/new.py && ls {staged}/.venv")


def test_a_pass_skips_what_did_not_change(tenant: tuple[Path, WorkspaceAcl]) -> None:
    root, acl = tenant
    acl._clock = lambda: time.time_ns() + LATER
    langbot.write_inbox(root, "run-1", {"a": b"a"})
    langbot.stage_mcp_server(root, "srv", langbot.mcp_server_source(root.parent / "src"))
    cwd = "/workspace/.mcp/srv/workspace"
    acl.refresh(cwd)  # grants (which changes the directories), then once more to see them settled
    acl._clock = lambda: time.time_ns() + 2 * LATER
    acl.refresh(cwd)
    assert not acl.dirty(cwd) and not acl.dirty("/workspace")
    sandbox(f"touch {root}/.mcp/srv/workspace/made-by-the-sandbox")
    assert acl.dirty(cwd) and not acl.dirty("/workspace")
    langbot.reset_outbox(root, "run-2")
    assert acl.dirty("/workspace")


def test_a_change_in_the_same_tick_as_a_pass_is_looked_at_again(tenant: tuple[Path, WorkspaceAcl]) -> None:
    root, acl = tenant
    langbot.write_inbox(root, "run-1", {"a": b"a"})
    acl.refresh("/workspace")
    # The pass ran just now: the directories it saw could still change within the same tick.
    assert acl.dirty("/workspace")


def test_a_pass_stops_after_its_budget_and_the_next_one_goes_on(
    tenant: tuple[Path, WorkspaceAcl], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, acl = tenant
    for index in range(12):
        langbot.write_inbox(root, f"run-{index}", {"f": b"x"})
    monkeypatch.setattr(workspace_acl, "MAX_ENTRIES_PER_PASS", 10)
    passes = 0
    while acl.dirty("/workspace") and passes < 10:
        acl._clock = lambda: time.time_ns() + LATER
        acl.refresh("/workspace")
        passes += 1
    assert 1 < passes < 10
    assert sandbox(f"cat {root}/inbox/run-*/f") == "x" * 12


def test_privileged_and_multiply_linked_files_and_symlinks_are_left_alone(
    tenant: tuple[Path, WorkspaceAcl], default_workspace: Path
) -> None:
    root, acl = tenant
    outside = default_workspace / "outside"
    outside.mkdir(mode=0o700)
    (outside / "secret").write_text("host only")
    langbot.write_inbox(root, "run-1", {"setuid": b"#!/bin/sh\n", "linked": b"two names"})
    (root / "inbox" / "run-1" / "setuid").chmod(0o4755)
    os.link(root / "inbox" / "run-1" / "linked", outside / "linked")
    os.symlink(outside, root / "inbox" / "run-1" / "escape")
    os.symlink(outside, root / "inbox" / "run-2")
    acl.refresh("/workspace/inbox/run-2/x")
    assert "Permission denied" in sandbox_fails(f"echo x >> {root}/inbox/run-1/setuid")
    assert (root / "inbox" / "run-1" / "setuid").stat().st_mode & 0o7777 == 0o4755
    assert "Permission denied" in sandbox_fails(f"cat {root}/inbox/run-1/linked")
    assert "Permission denied" in sandbox_fails(f"cat {outside}/secret")
    assert os.listxattr(outside) == [] and os.listxattr(outside / "secret") == []


def test_a_chmod_by_the_sandbox_cannot_make_a_setuid_root_file(tenant: tuple[Path, WorkspaceAcl]) -> None:
    root, acl = tenant
    langbot.write_inbox(root, "run-1", {"tool": b"#!/bin/sh\n"})
    settle(acl)
    assert "Operation not permitted" in sandbox_fails(f"chmod u+s {root}/inbox/run-1/tool")
    sandbox(f"cp /bin/true {root}/mine && chmod u+s {root}/mine")
    assert (root / "mine").stat().st_uid == SANDBOX  # setuid, but to the sandbox user, never root


def test_nothing_is_needed_for_read_only_directories(default_workspace: Path) -> None:
    notes: list[str] = []
    read_only = ResolvedMount(str(default_workspace), "/workspace", True)
    assert for_host_workspace(read_only, SANDBOX, SANDBOX, notes) is None
    assert notes == [] and os.listxattr(default_workspace) == []


def test_what_root_makes_in_the_sandboxs_own_directory_stays_open_to_it(default_workspace: Path) -> None:
    # The daemon made the workspace for the sandbox (so the sandbox owns it); LangBot, as root,
    # then writes its inbox into it with 0700/0600.
    os.chown(default_workspace, SANDBOX, SANDBOX)
    own = ResolvedMount(str(default_workspace), "/workspace", False)
    notes: list[str] = []
    acl = for_host_workspace(own, SANDBOX, SANDBOX, notes)
    assert acl is not None and notes == []
    try:
        langbot.write_inbox(default_workspace, "run-1", {"photo.txt": b"attached"})
        assert "Permission denied" in sandbox_fails(f"cat {default_workspace}/inbox/run-1/photo.txt")
        acl.refresh("/workspace")
        assert sandbox(f"cat {default_workspace}/inbox/run-1/photo.txt") == "attached"
        assert as_user(1234, f"cat {default_workspace}/inbox/run-1/photo.txt").returncode != 0
    finally:
        acl.close()


@pytest.fixture
def no_acl_filesystem(default_workspace: Path) -> Iterator[Path]:
    """ramfs: a filesystem with no extended attributes, so no ACLs."""
    target = default_workspace / "ramfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def test_a_filesystem_without_acls_is_refused_with_what_to_do(no_acl_filesystem: Path) -> None:
    no_acl_filesystem.chmod(0o755)
    mount = ResolvedMount(str(no_acl_filesystem), "/workspace", False)
    with pytest.raises(BoxValidationError, match=r"does not support POSIX ACLs.*chown the directory to 1000:1000"):
        for_host_workspace(mount, SANDBOX, SANDBOX, [])
    # Writable for the sandbox user already (the operator's choice): it goes ahead, and says what it lacks.
    no_acl_filesystem.chmod(0o1777)
    notes: list[str] = []
    assert for_host_workspace(mount, SANDBOX, SANDBOX, notes) is None
    assert "does not support POSIX ACLs" in notes[0]


def test_a_daemon_that_may_not_set_acls_is_refused_with_what_to_do(default_workspace: Path) -> None:
    mount = ResolvedMount(str(default_workspace), "/workspace", False)
    os.setegid(1234)
    os.seteuid(1234)  # this process, for a moment, a daemon that is not root
    try:
        refused = r"this daemon \(uid 1234\) may not set it: run the daemon as root"
        with pytest.raises(BoxValidationError, match=refused):
            for_host_workspace(mount, SANDBOX, SANDBOX, [])
    finally:
        os.seteuid(0)
        os.setegid(0)
    assert os.listxattr(default_workspace) == []
