"""Mount policy on real files: allow-list roots, the denylist, realpath, duplicate targets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from boxruntime.errors import BoxValidationError
from boxruntime.models import BoxSpec
from boxruntime.security import ResolvedMount, check_host_path, prepare_host_dirs, resolve_mounts


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


# ── check_host_path ───────────────────────────────────────────────────────


def test_paths_under_a_root_are_allowed(root: Path) -> None:
    (root / "ws").mkdir()
    assert check_host_path(str(root / "ws"), [root], "host_path") == os.path.realpath(root / "ws")
    assert check_host_path(str(root), [root], "host_path") == os.path.realpath(root)
    # A source that does not exist yet (created later for rw mounts) is judged by its path.
    assert check_host_path(str(root / "new" / "dir"), [root], "host_path") == os.path.realpath(root / "new" / "dir")


def test_any_of_several_roots_allows(root: Path, outside: Path) -> None:
    assert check_host_path(str(outside / "x"), [root, outside], "host_path") == os.path.realpath(outside / "x")


def test_paths_outside_the_roots_are_refused(root: Path, outside: Path) -> None:
    with pytest.raises(BoxValidationError, match="outside the allowed mount roots") as info:
        check_host_path(str(outside), [root], "host_path")
    assert str(info.value).startswith("host_path ")
    assert str(root) in str(info.value)


def test_sibling_with_a_common_prefix_is_outside(tmp_path: Path, root: Path) -> None:
    evil = tmp_path / "rootevil"
    evil.mkdir()
    with pytest.raises(BoxValidationError, match="outside"):
        check_host_path(str(evil), [root], "host_path")


def test_no_roots_means_nothing_is_allowed(root: Path) -> None:
    with pytest.raises(BoxValidationError, match="none configured"):
        check_host_path(str(root), [], "host_path")


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc",
        "/etc/",
        "/etc/passwd",
        "/proc/1",
        "/proc/self",
        "/sys",
        "/dev",
        "/dev/null",
        "/root",
        "/root/.ssh",
        "/boot",
        "/run",
        "/run/docker.sock",
        "/var/run",
        "/var/run/docker.sock",
        "/var/lib/docker",
        "//etc",
        "/usr/../etc/shadow",
    ],
)
def test_denylist_wins_even_when_a_root_allows_it(path: str) -> None:
    with pytest.raises(BoxValidationError, match="blocked for security"):
        check_host_path(path, [Path("/")], "host_path")


def test_allowed_when_root_is_slash_and_path_is_not_denied(root: Path) -> None:
    # The control for the table above: "/" as a root does allow ordinary paths.
    assert check_host_path(str(root), [Path("/")], "host_path") == os.path.realpath(root)


def test_symlink_escaping_to_etc_is_refused(root: Path) -> None:
    link = root / "innocent"
    link.symlink_to("/etc")
    with pytest.raises(BoxValidationError, match="blocked for security") as info:
        check_host_path(str(link), [root, Path("/")], "host_path")
    assert "resolves to /etc" in str(info.value)
    # Through a symlinked parent directory, too.
    with pytest.raises(BoxValidationError, match="blocked for security"):
        check_host_path(str(link / "passwd"), [root], "host_path")


def test_symlink_escaping_to_another_dir_outside_the_roots_is_refused(root: Path, outside: Path) -> None:
    link = root / "shortcut"
    link.symlink_to(outside)
    with pytest.raises(BoxValidationError, match="outside the allowed mount roots") as info:
        check_host_path(str(link), [root], "host_path")
    assert f"resolves to {os.path.realpath(outside)}" in str(info.value)
    with pytest.raises(BoxValidationError, match="outside"):
        check_host_path(str(link / "deeper"), [root], "host_path")


def test_symlink_staying_inside_the_root_resolves_to_its_target(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real")
    assert check_host_path(str(root / "alias"), [root], "host_path") == os.path.realpath(root / "real")


def test_symlinked_root_is_compared_by_realpath(tmp_path: Path, root: Path) -> None:
    root_link = tmp_path / "root-link"
    root_link.symlink_to(root)
    assert check_host_path(str(root / "x"), [root_link], "host_path") == os.path.realpath(root / "x")
    assert check_host_path(str(root_link / "x"), [root], "host_path") == os.path.realpath(root / "x")


@pytest.mark.parametrize("suffix", ["../outside", "sub/../../outside", "./../outside/x", "../../.."])
def test_dot_dot_traversal_out_of_the_root_is_refused(root: Path, outside: Path, suffix: str) -> None:
    (root / "sub").mkdir()
    with pytest.raises(BoxValidationError):
        check_host_path(f"{root}/{suffix}", [root], "host_path")


def test_dot_dot_traversal_into_etc_is_refused(root: Path) -> None:
    depth = len(root.parts) - 1
    with pytest.raises(BoxValidationError, match="blocked for security"):
        check_host_path(str(root) + "/.." * depth + "/etc", [Path("/")], "host_path")


def test_dot_dot_that_stays_inside_is_allowed(root: Path) -> None:
    (root / "a").mkdir()
    assert check_host_path(f"{root}/a/../b", [root], "host_path") == os.path.realpath(root / "b")


def test_nul_byte_is_refused(root: Path) -> None:
    with pytest.raises(BoxValidationError, match="NUL"):
        check_host_path(f"{root}/a\0b", [root], "host_path")


# ── resolve_mounts ────────────────────────────────────────────────────────


def test_resolve_mounts_returns_workspace_and_extras(root: Path) -> None:
    spec = BoxSpec(
        session_id="s",
        host_path=str(root / "ws"),
        host_path_mode="ro",
        extra_mounts=[
            {"host_path": str(root / "a"), "mount_path": "/mnt/a"},
            {"host_path": str(root / "b"), "mount_path": "/mnt/b", "mode": "ro"},
        ],
    )
    workspace, extras = resolve_mounts(spec, [root])
    real = os.path.realpath(root)
    assert workspace == ResolvedMount(f"{real}/ws", "/workspace", True)
    assert extras == [
        ResolvedMount(f"{real}/a", "/mnt/a", False),
        ResolvedMount(f"{real}/b", "/mnt/b", True),
    ]


def test_no_host_path_means_no_workspace_mount(root: Path) -> None:
    assert resolve_mounts(BoxSpec(session_id="s"), [root]) == (None, [])


def test_host_path_is_checked(root: Path) -> None:
    spec = BoxSpec(session_id="s", host_path="/etc")
    with pytest.raises(BoxValidationError, match=r"^host_path /etc is blocked for security"):
        resolve_mounts(spec, [Path("/")])


def test_host_path_mode_none_is_skipped(root: Path) -> None:
    spec = BoxSpec(session_id="s", host_path="/etc", host_path_mode="none")
    assert resolve_mounts(spec, [root]) == (None, [])


@pytest.mark.parametrize("bad", ["/etc", "/run/docker.sock", "OUTSIDE"])
def test_each_extra_mount_is_checked_with_its_field_name(root: Path, outside: Path, bad: str) -> None:
    bad_path = str(outside) if bad == "OUTSIDE" else bad
    spec = BoxSpec(
        session_id="s",
        host_path=str(root / "ws"),
        extra_mounts=[
            {"host_path": str(root / "ok"), "mount_path": "/mnt/ok"},
            {"host_path": bad_path, "mount_path": "/mnt/bad"},
        ],
    )
    with pytest.raises(BoxValidationError) as info:
        resolve_mounts(spec, [root])
    assert str(info.value).startswith(f"extra_mounts[1].host_path {bad_path}")


def test_extra_mount_with_mode_none_is_skipped(root: Path) -> None:
    spec = BoxSpec(
        session_id="s",
        extra_mounts=[
            {"host_path": "/etc", "mount_path": "/mnt/etc", "mode": "none"},
            {"host_path": str(root / "ok"), "mount_path": "/mnt/ok"},
        ],
    )
    _, extras = resolve_mounts(spec, [root])
    assert [m.mount_path for m in extras] == ["/mnt/ok"]


def test_error_names_the_request_index_even_after_a_skipped_mount(root: Path, outside: Path) -> None:
    # The field in the message must point at the entry the caller sent, so mounts skipped
    # for mode "none" must not shift the index.
    spec = BoxSpec(
        session_id="s",
        extra_mounts=[
            {"host_path": str(root / "off"), "mount_path": "/mnt/off", "mode": "none"},
            {"host_path": str(outside), "mount_path": "/mnt/bad"},
        ],
    )
    with pytest.raises(BoxValidationError) as info:
        resolve_mounts(spec, [root])
    assert str(info.value).startswith(f"extra_mounts[1].host_path {outside}")


def test_duplicate_extra_mount_targets_are_refused(root: Path) -> None:
    spec = BoxSpec(
        session_id="s",
        extra_mounts=[
            {"host_path": str(root / "a"), "mount_path": "/mnt/x"},
            {"host_path": str(root / "b"), "mount_path": "/mnt/x"},
        ],
    )
    with pytest.raises(BoxValidationError, match=r"extra_mounts\[1\]\.mount_path /mnt/x is used twice"):
        resolve_mounts(spec, [root])


def test_extra_mount_onto_the_workspace_mount_path_is_refused(root: Path) -> None:
    spec = BoxSpec(
        session_id="s",
        host_path=str(root / "ws"),
        extra_mounts=[{"host_path": str(root / "a"), "mount_path": "/workspace"}],
    )
    with pytest.raises(BoxValidationError, match="used twice"):
        resolve_mounts(spec, [root])


# ── prepare_host_dirs ─────────────────────────────────────────────────────


def _sandbox_owner() -> tuple[int, int]:
    # As root, hand the directory to another user; otherwise we can only give it to ourselves.
    return (12345, 23456) if os.geteuid() == 0 else (os.getuid(), os.getgid())


def test_prepare_creates_missing_rw_sources_owned_by_the_sandbox_user(root: Path) -> None:
    uid, gid = _sandbox_owner()
    target = root / "deep" / "new"
    created = prepare_host_dirs([ResolvedMount(str(target), "/workspace", False)], uid, gid)
    assert created == [str(target)]
    assert target.is_dir()
    assert (target.stat().st_uid, target.stat().st_gid) == (uid, gid)


def test_prepare_leaves_existing_sources_alone(root: Path) -> None:
    uid, gid = _sandbox_owner()
    (root / "file").write_text("x")
    (root / "dir").mkdir()
    before = (root / "dir").stat()
    mounts = [ResolvedMount(str(root / "file"), "/f", True), ResolvedMount(str(root / "dir"), "/w", False)]
    assert prepare_host_dirs(mounts, uid, gid) == []
    assert (root / "file").read_text() == "x"
    assert (root / "dir").stat().st_uid == before.st_uid


def test_prepare_refuses_missing_ro_sources(root: Path) -> None:
    uid, gid = _sandbox_owner()
    missing = root / "missing"
    with pytest.raises(BoxValidationError, match="does not exist"):
        prepare_host_dirs([ResolvedMount(str(missing), "/data", True)], uid, gid)
    assert not missing.exists()
