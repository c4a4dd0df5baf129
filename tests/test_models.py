"""The contract models against LangBot 0.5.0a2's own (reference §C).

``langbot_plugin.box.models`` is the real LangBot package, installed for the tests: our BoxSpec
must accept and normalise what it accepts, and LangBot's response models must read our JSON.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langbot_plugin.box import models as lb

from boxruntime.models import (
    BoxSpec,
    EndReason,
    ExecResult,
    ExecStatus,
    ManagedProcessInfo,
    ManagedProcessSpec,
    ManagedProcessStatus,
    MountSpec,
    NetworkMode,
    SessionInfo,
    utcnow,
)

# Values both models accept on their own (cross-field rules may still reject a combination).
VALID_CHOICES: dict[str, list[Any]] = {
    "cmd": ["", "  ls -la  ", "echo hi"],
    "workdir": [None, "", "/workspace", " /workspace/sub ", "/other", "/data/x"],
    "mount_path": ["/workspace", " /data ", "/data", "/data/"],
    "timeout_sec": [30, 1, "45"],
    "network": ["off", "on"],
    "env": [{}, {"A": "1"}, {"PATH": "/bin", "LANG": "C.UTF-8"}],
    "image": ["alpine:3", "rockchin/langbot-sandbox:latest"],
    "host_path": [None, "/srv/data", " /srv/data ", "C:\\Users\\x"],
    "host_path_mode": ["rw", "ro", "none"],
    "extra_mounts": [
        [],
        [{"host_path": "/a", "mount_path": "/mnt/a"}],
        [{"host_path": " /a ", "mount_path": "/mnt/a", "mode": "ro"}, {"host_path": "/b", "mount_path": "/mnt/b"}],
    ],
    "persistent": [True, False],
    "cpus": [1.0, 0.5, 2],
    "memory_mb": [512, 32, 1024],
    "pids_limit": [128, 1],
    "read_only_rootfs": [True, False],
    "workspace_quota_mb": [0, 100],
    "bogus_unknown_key": [1, "x"],
}
INVALID_CHOICES: list[tuple[str, Any]] = [
    ("cmd", None),
    ("workdir", "relative"),
    ("mount_path", "rel"),
    ("mount_path", ""),
    ("timeout_sec", 0),
    ("timeout_sec", -1),
    ("timeout_sec", 2.5),
    ("network", "bogus"),
    ("session_id", ""),
    ("session_id", "   "),
    ("host_path", "relative/dir"),
    ("host_path", ""),
    ("host_path_mode", "bad"),
    ("extra_mounts", [{"host_path": "rel", "mount_path": "/x"}]),
    ("extra_mounts", [{"host_path": "/a", "mount_path": "x"}]),
    ("extra_mounts", [{"host_path": "/a", "mount_path": "/x", "mode": "sideways"}]),
    ("cpus", 0),
    ("cpus", -1),
    ("memory_mb", 31),
    ("pids_limit", 0),
    ("workspace_quota_mb", -1),
]


def _with_one_invalid(data: dict[str, Any], invalid: tuple[str, Any] | None) -> dict[str, Any]:
    return data if invalid is None else {**data, invalid[0]: invalid[1]}


spec_inputs = st.builds(
    _with_one_invalid,
    st.fixed_dictionaries(
        {"session_id": st.sampled_from([" s1 ", "chat/1", "s"])},
        optional={name: st.sampled_from(choices) for name, choices in VALID_CHOICES.items()},
    ),
    st.none() | st.none() | st.sampled_from(INVALID_CHOICES),
)


def _shared_dumps(ours: pydantic.BaseModel, theirs: pydantic.BaseModel) -> tuple[dict, dict]:
    a, b = ours.model_dump(mode="json"), theirs.model_dump(mode="json")
    shared = set(a) & set(b)
    return {k: a[k] for k in shared}, {k: b[k] for k in shared}


def test_boxspec_has_every_langbot_field() -> None:
    assert set(lb.BoxSpec.model_fields) <= set(BoxSpec.model_fields)
    assert set(lb.BoxMountSpec.model_fields) <= set(MountSpec.model_fields)


def test_boxspec_defaults_equal_langbot() -> None:
    ours = BoxSpec(session_id="s")
    theirs = lb.BoxSpec(session_id="s")
    assert ours.model_dump(mode="json") == theirs.model_dump(mode="json")
    assert ours.image == lb.DEFAULT_BOX_IMAGE == "rockchin/langbot-sandbox:latest"
    assert ours.workdir == ours.mount_path == lb.DEFAULT_BOX_MOUNT_PATH


@settings(max_examples=200, deadline=None)
@given(data=spec_inputs)
def test_boxspec_accepts_and_normalises_like_langbot(data: dict[str, Any]) -> None:
    try:
        theirs = lb.BoxSpec.model_validate(dict(data))
    except pydantic.ValidationError:
        with pytest.raises(pydantic.ValidationError):
            BoxSpec.model_validate(dict(data))
        return
    ours = BoxSpec.model_validate(dict(data))
    mine, langbot = _shared_dumps(ours, theirs)
    assert mine == langbot


@pytest.mark.parametrize(
    "data",
    [
        {"session_id": "s", "mount_path": "/data"},
        {"session_id": "s", "mount_path": "/data", "workdir": ""},
        {"session_id": "s", "mount_path": "/data", "workdir": None},
        {"session_id": "s", "mount_path": " /data ", "host_path": "/srv/x"},
    ],
)
def test_workdir_defaults_to_mount_path(data: dict[str, Any]) -> None:
    spec = BoxSpec.model_validate(data)
    assert spec.workdir == spec.mount_path == "/data"


def test_explicit_workdir_is_kept_and_stripped() -> None:
    assert BoxSpec(session_id="s", mount_path="/data", workdir=" /data/sub ").workdir == "/data/sub"
    assert BoxSpec(session_id="s", workdir="/tmp").workdir == "/tmp"  # no host mount: anywhere


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"session_id": ""}, "session_id"),
        ({"session_id": "   "}, "session_id"),
        ({}, "session_id"),
        ({"session_id": "s", "workdir": "relative/dir"}, "workdir"),
        ({"session_id": "s", "mount_path": "workspace"}, "mount_path"),
        ({"session_id": "s", "timeout_sec": 0}, "timeout_sec"),
        ({"session_id": "s", "timeout_sec": -5}, "timeout_sec"),
        ({"session_id": "s", "memory_mb": 31}, "memory_mb"),
        ({"session_id": "s", "cpus": 0}, "cpus"),
        ({"session_id": "s", "pids_limit": 0}, "pids_limit"),
        ({"session_id": "s", "workspace_quota_mb": -1}, "workspace_quota_mb"),
        ({"session_id": "s", "host_path": "relative/dir"}, "host_path"),
        ({"session_id": "s", "network": "maybe"}, "network"),
        ({"session_id": "s", "extra_mounts": [{"host_path": "rel", "mount_path": "/x"}]}, "extra_mounts"),
        ({"session_id": "s", "extra_mounts": [{"host_path": "/a", "mount_path": "x"}]}, "extra_mounts"),
    ],
)
def test_invalid_fields_are_rejected(data: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        BoxSpec.model_validate(data)
    assert field in str(info.value)


@pytest.mark.parametrize("workdir", ["/tmp", "/workspace2", "/", "/work"])
def test_workdir_outside_mount_path_with_host_path_is_rejected(workdir: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="workdir must stay under mount_path"):
        BoxSpec(session_id="s", host_path="/srv/data", workdir=workdir)
    # Without a host mount (or with mode none) the same workdir is fine.
    assert BoxSpec(session_id="s", workdir=workdir).workdir == workdir
    assert BoxSpec(session_id="s", host_path="/srv/data", host_path_mode="none", workdir=workdir).workdir == workdir


def test_workdir_under_mount_path_with_host_path_is_accepted() -> None:
    spec = BoxSpec(session_id="s", host_path="/srv/data", workdir="/workspace/project/src")
    assert spec.workdir == "/workspace/project/src"
    assert spec.has_host_mount()


def test_windows_host_path_is_absolute() -> None:
    assert BoxSpec(session_id="s", host_path="C:\\Users\\me").host_path == "C:\\Users\\me"


def test_env_keys_and_values_are_coerced_to_str() -> None:
    spec = BoxSpec.model_validate({"session_id": "s", "env": {"A": 1, 2: True, "F": 1.5, "N": None}})
    assert spec.env == {"A": "1", "2": "True", "F": "1.5", "N": "None"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in spec.env.items())
    proc = ManagedProcessSpec.model_validate({"command": "python", "args": [1, "x", 2.0], "env": {"K": 3}})
    assert proc.args == ["1", "x", "2.0"]
    assert proc.env == {"K": "3"}


def test_unknown_keys_are_ignored() -> None:
    spec = BoxSpec.model_validate({"session_id": "s", "bogus": 1, "context": {"instance_uuid": "i"}})
    assert "bogus" not in spec.model_dump()
    assert "context" not in spec.model_dump()
    mount = MountSpec.model_validate({"host_path": "/a", "mount_path": "/b", "content_digest": "sha256:x"})
    assert mount.model_dump(mode="json") == {"host_path": "/a", "mount_path": "/b", "mode": "rw"}
    proc = ManagedProcessSpec.model_validate({"command": "x", "memory_mb": 64})
    assert "memory_mb" not in proc.model_dump()


def test_spec_strips_cmd_session_id_and_paths() -> None:
    spec = BoxSpec(session_id="  s1 ", cmd="  ls  ", host_path=" /srv/x ", mount_path=" /data ")
    assert (spec.session_id, spec.cmd, spec.host_path, spec.mount_path) == ("s1", "ls", "/srv/x", "/data")


# ── responses readable by LangBot's models ────────────────────────────────


def _session_info() -> SessionInfo:
    now = utcnow()
    return SessionInfo(
        session_id="chat-1",
        backend_name="docker",
        backend_session_id="boxruntime-chat-1-abc",
        image="alpine:3",
        network=NetworkMode.ON,
        host_path="/srv/data",
        host_path_mode="ro",
        mount_path="/data",
        persistent=True,
        cpus=0.5,
        memory_mb=256,
        pids_limit=64,
        read_only_rootfs=False,
        workspace_quota_mb=10,
        created_at=now - dt.timedelta(minutes=5),
        last_used_at=now,
        extra_mounts=[MountSpec(host_path="/a", mount_path="/mnt/a")],
        notes=["hello"],
    )


def test_session_info_serialises_utc_datetimes_with_z() -> None:
    info = _session_info()
    dumped = json.loads(info.model_dump_json())
    for key in ("created_at", "last_used_at"):
        assert dumped[key].endswith("Z")
        assert "+00:00" not in dumped[key]
        assert dt.datetime.fromisoformat(dumped[key]) == getattr(info, key)
    assert info.model_dump(mode="json")["created_at"] == dumped["created_at"]
    assert dumped["network"] == "on"
    assert dumped["host_path_mode"] == "ro"


def test_session_info_is_readable_by_langbot() -> None:
    info = _session_info()
    theirs = lb.BoxSessionInfo.model_validate(json.loads(info.model_dump_json()))
    assert theirs.created_at == info.created_at
    assert theirs.last_used_at == info.last_used_at
    mine, langbot = _shared_dumps(info, theirs)
    assert mine == langbot
    assert set(lb.BoxSessionInfo.model_fields) <= set(SessionInfo.model_fields)
    assert SessionInfo.model_validate(json.loads(info.model_dump_json())) == info


@pytest.mark.parametrize(
    "result",
    [
        ExecResult(
            session_id="s",
            backend_name="docker",
            status=ExecStatus.COMPLETED,
            exit_code=0,
            stdout="hi\n",
            duration_ms=3,
        ),
        ExecResult(
            session_id="s",
            backend_name="nsjail",
            status=ExecStatus.TIMED_OUT,
            exit_code=None,
            stderr="Command timed out after 1 seconds.",
            duration_ms=1000,
            end_reason=EndReason.TIMEOUT,
            signal=9,
        ),
        ExecResult(session_id="s", backend_name="docker", status="completed", exit_code=2, stderr="é😀", duration_ms=0),
    ],
)
def test_exec_result_is_readable_by_langbot(result: ExecResult) -> None:
    payload = json.loads(json.dumps(result.model_dump(mode="json")))
    theirs = lb.BoxExecutionResult.model_validate(payload)
    mine, langbot = _shared_dumps(result, theirs)
    assert mine == langbot
    assert theirs.ok == result.ok
    assert set(lb.BoxExecutionResult.model_fields) <= set(ExecResult.model_fields)


def test_managed_process_info_is_readable_by_langbot() -> None:
    started = dt.datetime(2026, 11, 21, 19, 25, 12, 511417, tzinfo=dt.UTC)
    info = ManagedProcessInfo(
        session_id="s",
        status=ManagedProcessStatus.EXITED,
        command="python",
        args=["-m", "server"],
        cwd="/workspace",
        env_keys=["A", "B"],
        started_at=started,
        exited_at=started + dt.timedelta(seconds=3),
        exit_code=1,
        stderr_preview="boom",
    )
    payload = json.loads(info.model_dump_json())
    assert payload["started_at"] == "2026-11-21T19:25:12.511417Z"
    assert payload["exited_at"] == "2026-11-21T19:25:15.511417Z"
    theirs = lb.BoxManagedProcessInfo.model_validate(payload)
    mine, langbot = _shared_dumps(info, theirs)
    assert mine == langbot
    assert theirs.started_at == started
