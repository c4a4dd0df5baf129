"""Packing a skill directory on the client (``langbot_bridge.skills.zip_directory``): what goes
in, what is skipped, what is refused — checked against the daemon's own zip extraction."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from boxruntime.errors import BoxValidationError
from boxruntime.models import HostMountMode, Skill, utcnow
from boxruntime.skills.archive import extract_zip
from langbot_bridge.skills import MAX_PACKAGE_BYTES, package_bytes, skill_mount, zip_directory

SKILL_MD = "---\nname: demo\ndescription: Demo\n---\n\nRun it.\n"


def write(path: Path, content: str | bytes = "x", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    write(root / "SKILL.md", SKILL_MD)
    write(root / "scripts" / "run.sh", "#!/bin/sh\necho hi\n", 0o755)
    write(root / "refs" / "guide.md", "guide")
    return root


def members(data: bytes) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: info for info in archive.infolist()}


def test_files_go_under_one_top_folder_with_their_modes(demo: Path) -> None:
    packed = members(zip_directory(demo))
    assert sorted(packed) == ["demo/SKILL.md", "demo/refs/guide.md", "demo/scripts/run.sh"]
    assert packed["demo/scripts/run.sh"].external_attr >> 16 == stat.S_IFREG | 0o755
    assert packed["demo/SKILL.md"].external_attr >> 16 == stat.S_IFREG | 0o644
    assert zip_directory(demo) == zip_directory(demo), "the same directory packs to the same bytes"


def test_tool_directories_are_skipped_at_any_depth(demo: Path) -> None:
    for skipped in (".git/HEAD", "__pycache__/m.pyc", ".venv/pyvenv.cfg", "node_modules/pkg/index.js"):
        write(demo / skipped)
        write(demo / "scripts" / skipped)
    # Links inside skipped directories are common (node_modules/.bin, .venv/bin/python) and
    # never looked at.
    os.symlink("/usr/bin/python3", demo / ".venv" / "python")
    os.symlink("../pkg/index.js", demo / "scripts" / "node_modules" / "cli")
    write(demo / ".env.example", "KEY=")  # other dot-files are content
    write(demo / "notes" / "node_modules", "a file, not the directory")
    packed = members(zip_directory(demo))
    assert sorted(packed) == [
        "demo/.env.example",
        "demo/SKILL.md",
        "demo/notes/node_modules",
        "demo/refs/guide.md",
        "demo/scripts/run.sh",
    ]


def test_empty_directories_are_kept(demo: Path) -> None:
    (demo / "output").mkdir()
    write(demo / "cache" / "__pycache__" / "m.pyc")  # empty once the skipped directory is left out
    packed = members(zip_directory(demo))
    assert {"demo/output/", "demo/cache/"} <= set(packed)
    assert packed["demo/output/"].is_dir()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: os.symlink("/etc/passwd", d / "passwd"), r"a symlink, passwd -> /etc/passwd"),
        (lambda d: os.symlink("/etc", d / "refs" / "etc"), r"a symlink, refs/etc -> /etc"),
        (lambda d: os.symlink("missing", d / "dangling"), r"a symlink, dangling -> missing"),
        (lambda d: os.mkfifo(d / "pipe"), r"pipe, which is not a regular file or directory"),
    ],
    ids=["file link", "directory link", "dangling link", "fifo"],
)
def test_links_and_special_files_are_refused(demo: Path, make: Callable[[Path], object], message: str) -> None:
    make(demo)
    with pytest.raises(BoxValidationError, match=message) as refused:
        zip_directory(demo)
    assert f"skill directory {demo} contains" in str(refused.value)


def test_a_linked_skill_directory_itself_is_followed(demo: Path, tmp_path: Path) -> None:
    """The path the user names may be a link; only links inside the package are refused."""
    link = tmp_path / "current"
    os.symlink(demo, link)
    assert sorted(members(zip_directory(link))) == sorted(members(zip_directory(demo)))


def test_very_compressible_files_are_stored_so_the_daemon_takes_them(demo: Path, tmp_path: Path) -> None:
    write(demo / "data" / "zeros.bin", bytes(2 * 1024 * 1024))
    write(demo / "data" / "blank.txt", " " * 600)
    data = zip_directory(demo)
    packed = members(data)
    assert packed["demo/data/zeros.bin"].compress_type == zipfile.ZIP_STORED
    assert packed["demo/data/blank.txt"].compress_type == zipfile.ZIP_STORED
    assert packed["demo/SKILL.md"].compress_type == zipfile.ZIP_DEFLATED
    archive = tmp_path / "demo.zip"
    archive.write_bytes(data)
    extract_zip(archive, tmp_path / "out")  # the daemon's checks: a deflated 2 MiB of zeros is a "bomb"
    assert (tmp_path / "out" / "demo" / "data" / "zeros.bin").stat().st_size == 2 * 1024 * 1024
    assert os.stat(tmp_path / "out" / "demo" / "scripts" / "run.sh").st_mode & 0o111


def test_a_tree_too_large_for_a_skill_is_refused_before_it_is_read(demo: Path) -> None:
    with open(demo / "huge.bin", "wb") as handle:
        handle.truncate(MAX_PACKAGE_BYTES + 1)  # sparse: big to stat, nothing on disk
    with pytest.raises(BoxValidationError, match="too large for a skill package"):
        zip_directory(demo)


def test_package_bytes_of_a_zip_a_directory_and_nothing(demo: Path, tmp_path: Path) -> None:
    zipped = write(tmp_path / "bundle.zip", b"PK\x05\x06" + bytes(18))
    assert package_bytes(zipped) == (zipped.read_bytes(), "bundle.zip")
    assert package_bytes(demo) == (zip_directory(demo), "demo.zip")
    with pytest.raises(BoxValidationError, match="No such file"):
        package_bytes(tmp_path / "missing")
    with open(tmp_path / "huge.zip", "wb") as handle:
        handle.truncate(MAX_PACKAGE_BYTES + 1)
    with pytest.raises(BoxValidationError, match="it is not a skill zip"):
        package_bytes(tmp_path / "huge.zip")
    with pytest.raises(BoxValidationError, match="is not a directory"):
        zip_directory(zipped)


def test_skill_mount_is_read_only_under_the_workspace() -> None:
    now = utcnow()
    skill = Skill(
        name="demo",
        display_name="demo",
        description="",
        instructions="",
        package_root="/data/skills/demo",
        entry_file="SKILL.md",
        created_at=now,
        updated_at=now,
        digest="sha256:0",
        file_count=1,
        total_bytes=1,
    )
    mount = skill_mount(skill)
    assert (mount.host_path, mount.mount_path, mount.mode) == (
        "/data/skills/demo",
        "/workspace/.skills/demo",
        HostMountMode.READ_ONLY,
    )
    assert skill_mount(skill, "/home/agent/").mount_path == "/home/agent/.skills/demo"
