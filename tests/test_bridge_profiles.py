"""Profiles from profiles/*.toml, the merge order with locked fields, and the mount allow-list."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from boxruntime.errors import BoxValidationError
from boxruntime.models import DEFAULT_IMAGE, HostMountMode, NetworkMode
from langbot_bridge.profiles import (
    BUILTIN_PROFILES_DIR,
    BoxProfile,
    MountPolicy,
    load_profile_file,
    load_profiles,
    merge_spec,
)

# Reference §C.7 (v0.5 values: the default profile keeps the network off).
EXPECTED = {
    #                  network  mount  cpus  mem   pids  ro_rootfs  max  locked
    "default": ("off", "rw", 1.0, 512, 128, True, 120, set()),
    "offline_readonly": ("off", "ro", 0.5, 256, 64, True, 60, {"network", "host_path_mode", "read_only_rootfs"}),
    "network_basic": ("on", "rw", 1.0, 512, 128, True, 120, set()),
    "network_extended": ("on", "rw", 2.0, 1024, 256, False, 300, set()),
}


def test_builtin_profiles_have_the_reference_values() -> None:
    profiles = load_profiles()
    assert set(EXPECTED) <= set(profiles)
    for name, (network, mount, cpus, memory, pids, ro_rootfs, max_timeout, locked) in EXPECTED.items():
        profile = profiles[name]
        got = (
            profile.network.value,
            profile.host_path_mode.value,
            profile.cpus,
            profile.memory_mb,
            profile.pids_limit,
            profile.read_only_rootfs,
            profile.max_timeout_sec,
            set(profile.locked),
        )
        assert got == (network, mount, cpus, memory, pids, ro_rootfs, max_timeout, locked), name
        assert (profile.image, profile.timeout_sec, profile.workspace_quota_mb) == (DEFAULT_IMAGE, 30, 0)


def test_users_add_profiles_and_may_replace_a_builtin(tmp_path: Path) -> None:
    (tmp_path / "gpu_lab.toml").write_text('network = "on"\nmemory_mb = 4096\nmax_timeout_sec = 900\n')
    (tmp_path / "default.toml").write_text('memory_mb = 256\nlocked = ["network"]\n')
    profiles = load_profiles([tmp_path])
    assert profiles["gpu_lab"].memory_mb == 4096 and profiles["gpu_lab"].network == NetworkMode.ON
    assert profiles["default"].memory_mb == 256 and profiles["default"].locked == {"network"}
    assert profiles["network_basic"].network == NetworkMode.ON  # the other built-ins stay


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("netwerk = 'on'\n", "Extra inputs"),
        ("locked = ['cmd']\n", "locked names unknown fields"),
        ("timeout_sec = 200\nmax_timeout_sec = 100\n", "exceeds max_timeout_sec"),
        ("memory_mb = 8\n", "memory_mb"),
        ("name = 'other'\n", "differs from the file name"),
        ("network = \n", "cannot read profile"),
    ],
)
def test_invalid_profile_files_say_what_is_wrong(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(BoxValidationError, match=message):
        load_profile_file(path)


def test_missing_profile_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BoxValidationError, match="does not exist"):
        load_profiles([tmp_path / "nope"])
    with pytest.raises(BoxValidationError, match="built-in profiles missing"):
        load_profiles(builtin_dir=tmp_path)


def test_merge_profile_defaults_then_request() -> None:
    profile = load_profiles()["default"]
    spec = merge_spec(profile, "chat-1", {"cmd": "ls", "memory_mb": 1024, "env": {"A": 1}})
    assert spec.session_id == "chat-1" and spec.cmd == "ls"
    assert spec.memory_mb == 1024  # the request overrides an unlocked default
    assert (spec.network, spec.cpus, spec.image) == (NetworkMode.OFF, 1.0, DEFAULT_IMAGE)  # defaults fill the rest
    assert spec.env == {"A": "1"}


def test_locked_fields_win_over_the_request() -> None:
    profile = load_profiles()["offline_readonly"]
    spec = merge_spec(
        profile,
        "s",
        {"network": "on", "read_only_rootfs": False, "host_path_mode": "rw", "memory_mb": 300, "cpus": 0.25},
    )
    assert spec.network == NetworkMode.OFF
    assert spec.read_only_rootfs is True
    assert spec.host_path_mode == HostMountMode.READ_ONLY
    assert (spec.memory_mb, spec.cpus) == (300, 0.25)  # not locked: the request's


def test_timeout_is_clamped_to_the_profile_maximum() -> None:
    profiles = load_profiles()
    assert merge_spec(profiles["offline_readonly"], "s", {"timeout_sec": 3600}).timeout_sec == 60
    assert merge_spec(profiles["network_extended"], "s", {"timeout_sec": 3600}).timeout_sec == 300
    assert merge_spec(profiles["default"], "s", {"timeout_sec": 5}).timeout_sec == 5
    assert merge_spec(profiles["default"], "s", {}).timeout_sec == 30


def test_locked_timeout_ignores_the_request() -> None:
    profile = BoxProfile(name="strict", timeout_sec=10, max_timeout_sec=20, locked=frozenset({"timeout_sec"}))
    assert merge_spec(profile, "s", {"timeout_sec": 15}).timeout_sec == 10


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"session_id": "other"}, "unknown spec fields"),
        ({"bogus": 1}, "unknown spec fields"),
        ({"memory_mb": 1}, "memory_mb"),
        ({"workdir": "relative"}, "workdir"),
        ({"timeout_sec": 0}, "timeout_sec"),
    ],
)
def test_bad_requests_are_refused_with_the_field_named(request_fields: dict[str, object], message: str) -> None:
    with pytest.raises(BoxValidationError, match=message):
        merge_spec(load_profiles()["default"], "s", request_fields)


def test_mounts_must_lie_under_an_allowed_root(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "project").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    policy = MountPolicy([allowed])
    profile = load_profiles()["default"]

    ok = merge_spec(profile, "s", {"host_path": str(allowed / "project")})
    policy.check(ok)
    policy.check(merge_spec(profile, "s", {"host_path": str(allowed)}))

    for bad in (outside, allowed / "escape", allowed / ".." / "outside", Path(str(allowed) + "-sibling")):
        with pytest.raises(BoxValidationError, match="outside the allowed mount roots"):
            policy.check(merge_spec(profile, "s", {"host_path": str(bad)}))

    extra = {"extra_mounts": [{"host_path": str(outside), "mount_path": "/data", "mode": "ro"}]}
    with pytest.raises(BoxValidationError, match=r"extra_mounts\[0\]"):
        policy.check(merge_spec(profile, "s", extra))

    # A mount in mode "none" mounts nothing, so there is nothing to check.
    policy.check(merge_spec(profile, "s", {"host_path": str(outside), "host_path_mode": "none"}))


def test_no_allowed_roots_means_no_host_mounts(tmp_path: Path) -> None:
    spec = merge_spec(load_profiles()["default"], "s", {"host_path": str(tmp_path)})
    with pytest.raises(BoxValidationError, match="no allowed mount roots are configured"):
        MountPolicy([]).check(spec)
    MountPolicy([]).check(merge_spec(load_profiles()["default"], "s", {}))  # no mounts: fine


def test_the_shipped_profile_files_are_the_builtins() -> None:
    names = sorted(p.stem for p in BUILTIN_PROFILES_DIR.glob("*.toml"))
    assert names == sorted(EXPECTED)
    assert os.access(BUILTIN_PROFILES_DIR, os.R_OK)
