"""The e2b backend's host-mount copies, the host side (no server): which trees go, where, within
which caps, and that writing back here never follows a symlink or leaves the mount."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from boxruntime.backends.e2b import workspace_sync
from boxruntime.backends.e2b.workspace_sync import MountSync, pack, plan
from boxruntime.errors import BoxValidationError
from boxruntime.security import ResolvedMount


def tree(root: Path) -> Path:
    (root / "src" / "__pycache__").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print(1)\n")
    (root / "src" / "__pycache__" / "main.pyc").write_bytes(b"\0")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "link").symlink_to("/etc/passwd")
    return root


def test_the_workspace_and_extra_mounts_go_where_their_mount_paths_live(tmp_path: Path) -> None:
    workspace = ResolvedMount(str(tmp_path / "ws"), "/workspace", read_only=False)
    skill = ResolvedMount(str(tmp_path / "skill"), "/workspace/.skills/x", read_only=True)
    site = ResolvedMount(str(tmp_path / "site"), "/opt/site", read_only=True)
    planned = plan(workspace, [skill, site])
    assert [(m.real, m.writable) for m in planned] == [
        ("/home/user/workspace", True),
        ("/home/user/workspace/.skills/x", False),
        ("/home/user/opt/site", False),
    ]
    assert planned[0].inner == (".skills/x",)  # the skill's files are the skill mount's, not the workspace's
    assert not planned[0].ours(".skills/x/SKILL.md") and planned[0].ours(".skills/other")
    assert not planned[0].ours("node_modules/a.js") and not planned[0].ours("src/__pycache__/m.pyc")


def test_one_tar_holds_files_and_directories_and_nothing_else(tmp_path: Path) -> None:
    sync = MountSync(tree(tmp_path / "ws"), "/home/user/workspace", writable=True)
    packed = pack([sync])
    try:
        with tarfile.open(packed.archive) as tar:
            members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == [
            "home/user/workspace",
            "home/user/workspace/run.sh",
            "home/user/workspace/src",
            "home/user/workspace/src/main.py",
        ]
        assert members["home/user/workspace/run.sh"].mode & 0o111
        assert (packed.files, packed.total) == (2, len("print(1)\n") + len("#!/bin/sh\n"))
        assert any("link is not copied" in note for note in packed.notes)
        assert set(sync.host_seen) == {"run.sh", "src/main.py"}
    finally:
        packed.archive.unlink()


def test_a_file_over_the_cap_is_left_out_and_a_tree_over_the_caps_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "big.bin").write_bytes(b"x" * 200)
    for index in range(3):
        (root / f"f{index}.txt").write_text("small")
    monkeypatch.setattr(workspace_sync, "MAX_FILE_BYTES", 100)
    sync = MountSync(root, "/home/user/workspace", writable=True)
    packed = pack([sync])
    packed.archive.unlink()
    assert sync.left_out == {"big.bin"} and any("big.bin is not copied" in n for n in packed.notes)
    monkeypatch.setattr(workspace_sync, "MAX_FILES", 2)
    with pytest.raises(BoxValidationError, match="too big for the e2b backend"):
        pack([MountSync(root, "/home/user/workspace", writable=True)])
    monkeypatch.setattr(workspace_sync, "MAX_FILES", 100)
    monkeypatch.setattr(workspace_sync, "MAX_TOTAL_BYTES", 12)
    with pytest.raises(BoxValidationError, match="at most 100 files"):
        pack([MountSync(root, "/home/user/workspace", writable=True)])
    assert list(Path(os.environ.get("TMPDIR", "/tmp")).glob("boxruntime-e2b-*.tar")) == []  # no leftover tar


def test_writing_back_never_follows_a_symlink_or_leaves_the_mount(tmp_path: Path) -> None:
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "target.txt")
    size, _ = workspace_sync._write_here(root, "deep/new/file.txt", b"data", 0o755)
    assert size == 4 and (root / "deep" / "new" / "file.txt").read_bytes() == b"data"
    assert os.access(root / "deep" / "new" / "file.txt", os.X_OK)
    for relative in ("escape/evil.txt", "file-link"):
        with pytest.raises(OSError):
            workspace_sync._write_here(root, relative, b"evil", 0o644)
    assert list(outside.iterdir()) == []


def test_a_file_changed_here_is_not_deleted_because_the_sandbox_deleted_it(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    sync = MountSync(root, "/home/user/workspace", writable=True)
    sync.host_seen["same.txt"] = workspace_sync._write_here(root, "same.txt", b"1", 0o644)
    sync.host_seen["changed.txt"] = workspace_sync._write_here(root, "changed.txt", b"1", 0o644)
    (root / "changed.txt").write_text("changed here, later")
    for relative in ("same.txt", "changed.txt", "never-here.txt"):
        workspace_sync._delete_here(sync, relative)
    assert sorted(p.name for p in root.iterdir()) == ["changed.txt"]


def test_a_mount_added_inside_a_tree_takes_its_files_from_that_tree(tmp_path: Path) -> None:
    workspace = plan(ResolvedMount(str(tmp_path / "ws"), "/workspace", read_only=False), [])[0]
    workspace.baseline = {"sub/a.txt": (1, 1.0), "top.txt": (1, 1.0)}  # copied back before the mount came
    added = plan(None, [ResolvedMount(str(tmp_path / "sub"), "/workspace/sub", read_only=False)])
    workspace_sync.nest([workspace, *added])
    assert workspace.inner == ("sub",)
    # sub/a.txt is the new mount's now: the workspace must not take it for deleted in the sandbox
    assert workspace.baseline == {"top.txt": (1, 1.0)}
