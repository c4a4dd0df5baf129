"""Every field of every action's request is bounded before anything reaches a backend or an agent
(issue 16, hardening): what the catalogue's request models refuse, as the daemon's action table
parses them. Each refusal is a ``BoxValidationError``, never a crash further down."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from boxruntime.action_table import parse_request
from boxruntime.errors import BoxValidationError
from boxruntime.models import actions as a
from boxruntime.models import bounds
from boxruntime.models.action_kinds import Action

MIB = 1 << 20
HEX64 = "ab" * 32
GRANT = {
    "instance_uuid": "inst",
    "workspace_uuid": "ws",
    "execution_generation": 1,
    "entitlement_revision": 1,
    "expires_at": "2030-01-01T00:00:00+00:00",
    "max_sessions": 1,
    "max_managed_processes": 0,
}
SPEC = {
    "session_id": "s",
    "cmd": "echo hi",
    "workdir": "/workspace/sub",
    "env": {"A": "1"},
    "image": "rockchin/langbot-sandbox:latest",
    "host_path": "/srv/data",
    "mount_path": "/workspace",
    "extra_mounts": [{"host_path": "/srv/extra", "mount_path": "/mnt/extra", "mode": "ro"}],
}
# A valid request of every action whose request is a model (box_init takes LangBot's config
# section, checked as it is applied).
VALID: dict[str, dict[str, Any]] = {
    a.PING.name: {},
    a.FILE_CHUNK.name: {"file_key": "k.zip", "chunk_base64": "AA==", "chunk_index": 0, "chunk_amount": 1},
    a.HEALTH.name: {},
    a.BACKEND_INFO.name: {},
    a.STATUS.name: {},
    a.SHUTDOWN_SESSIONS.name: {},
    a.RELAY_INFO.name: {},
    a.EXEC.name: SPEC,
    a.EXEC_STREAM.name: SPEC,
    a.EXEC_INTERACTIVE.name: {**SPEC, "tty": {"rows": 24, "cols": 80}},
    a.EXEC_INPUT.name: {"exec_id": "e1", "data": "aGk=", "eof": True},
    a.EXEC_RESIZE.name: {"exec_id": "e1", "rows": 24, "cols": 80},
    a.EXEC_SIGNAL.name: {"exec_id": "e1", "signal": 15},
    a.CREATE_SESSION.name: SPEC,
    a.GET_SESSION.name: {"session_id": "s"},
    a.GET_SESSIONS.name: {},
    a.DELETE_SESSION.name: {"session_id": "s"},
    a.START_PROCESS.name: {
        "session_id": "s",
        "spec": {"process_id": "p", "command": "cat", "args": ["-u"], "env": {"A": "1"}, "cwd": "/workspace"},
    },
    a.GET_PROCESS.name: {"session_id": "s", "process_id": "p"},
    a.STOP_PROCESS.name: {"session_id": "s", "process_id": "p"},
    a.FS_READ.name: {"session_id": "s", "path": "a/b.txt", "offset": 1, "length": 10},
    a.FS_WRITE.name: {"session_id": "s", "path": "a/b.txt", "data": "hi", "offset": 1},
    a.FS_LIST.name: {"session_id": "s", "path": "."},
    a.FS_STAT.name: {"session_id": "s", "path": "a"},
    a.FS_REMOVE.name: {"session_id": "s", "path": "a"},
    a.LIST_SKILLS.name: {},
    a.GET_SKILL.name: {"name": "sk"},
    a.CREATE_SKILL.name: {"skill": {"name": "sk", "description": "d", "package_root": "/srv/skills/sk"}},
    a.UPDATE_SKILL.name: {"name": "sk", "skill": {"description": "d"}},
    a.DELETE_SKILL.name: {"name": "sk"},
    a.SCAN_SKILL_DIRECTORY.name: {"path": "/srv/skills/sk"},
    a.LIST_SKILL_FILES.name: {"name": "sk", "path": "."},
    a.READ_SKILL_FILE.name: {"name": "sk", "path": "SKILL.md"},
    a.WRITE_SKILL_FILE.name: {"name": "sk", "path": "SKILL.md", "content": "x"},
    a.PREVIEW_SKILL_ZIP.name: {"file_key": "k.zip", "filename": "sk.zip", "source_subdir": "sub"},
    a.INSTALL_SKILL_ZIP.name: {"file_key": "k.zip", "source_paths": ["a"], "source_path": "a"},
    a.UPSERT_ADMISSION_GRANT.name: GRANT,
    a.REVOKE_ADMISSION_GRANT.name: {"instance_uuid": "inst", "workspace_uuid": "ws", "entitlement_revision": 1},
    a.VERIFY_SHARED_WORKSPACE.name: {"marker_name": "m"},
    a.STORAGE_ANALYSIS.name: {},
}


def refused(action: Action, data: dict[str, Any]) -> str:
    with pytest.raises(BoxValidationError) as caught:
        parse_request(action, data)
    return str(caught.value)


def with_field(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def strings(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Where ``data`` holds a string: the path of every string value."""
    if isinstance(data, str):
        yield path
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from strings(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from strings(value, (*path, index))


def test_every_model_request_of_the_catalogue_has_a_valid_example() -> None:
    modelled = {action.name for action in a.ACTIONS if action is not a.INIT}
    assert modelled == set(VALID)
    for name, data in VALID.items():
        parse_request(a.BY_NAME[name], data)


@pytest.mark.parametrize("name", sorted(VALID))
def test_no_string_of_any_request_may_hold_a_lone_surrogate(name: str) -> None:
    action = a.BY_NAME[name]
    for path in strings(VALID[name]):
        if name == a.VERIFY_SHARED_WORKSPACE.name:
            continue  # its name is checked by the action, which answers BoxReadinessError
        message = refused(action, with_field(VALID[name], path, "x\udc80y"))
        assert "surrogate" in message, (name, path, message)


def test_env_is_bounded_in_entries_per_variable_and_in_all() -> None:
    exec_ = a.EXEC
    assert "longer than" in refused(exec_, {**SPEC, "env": {"A": "x" * (2 * MIB)}})
    many = {f"V{i}": "x" * 1000 for i in range(300)}
    assert "in all" in refused(exec_, {**SPEC, "env": many})
    assert "at most 1024 variables" in refused(exec_, {**SPEC, "env": {f"V{i}": "" for i in range(1025)}})
    parse_request(exec_, {**SPEC, "env": {"BIG": "x" * (100 << 10)}})
    process = VALID[a.START_PROCESS.name]
    assert "longer than" in refused(a.START_PROCESS, with_field(process, ("spec", "env"), {"A": "x" * (2 * MIB)}))


def test_commands_and_arguments_are_bounded() -> None:
    assert "at most" in refused(a.EXEC, {**SPEC, "cmd": "x" * (9 * MIB)})
    assert "NUL" in refused(a.EXEC, {**SPEC, "cmd": "echo a\0b"})
    process = VALID[a.START_PROCESS.name]
    assert "at most 4096 arguments" in refused(a.START_PROCESS, with_field(process, ("spec", "args"), ["x"] * 4097))
    assert "longer than" in refused(a.START_PROCESS, with_field(process, ("spec", "command"), "x" * (200 << 10)))
    assert "NUL" in refused(a.START_PROCESS, with_field(process, ("spec", "args"), ["a\0"]))


@pytest.mark.parametrize(
    ("name", "path"),
    [
        (a.EXEC.name, ("workdir",)),
        (a.EXEC.name, ("mount_path",)),
        (a.EXEC.name, ("host_path",)),
        (a.EXEC.name, ("extra_mounts", 0, "mount_path")),
        (a.EXEC.name, ("extra_mounts", 0, "host_path")),
        (a.START_PROCESS.name, ("spec", "cwd")),
        (a.FS_READ.name, ("path",)),
        (a.FS_WRITE.name, ("path",)),
        (a.FS_REMOVE.name, ("path",)),
        (a.FS_STAT.name, ("path",)),
        (a.FS_LIST.name, ("path",)),
        (a.SCAN_SKILL_DIRECTORY.name, ("path",)),
        (a.READ_SKILL_FILE.name, ("path",)),
        (a.WRITE_SKILL_FILE.name, ("path",)),
        (a.LIST_SKILL_FILES.name, ("path",)),
        (a.INSTALL_SKILL_ZIP.name, ("source_path",)),
        (a.INSTALL_SKILL_ZIP.name, ("source_paths", 0)),
        (a.PREVIEW_SKILL_ZIP.name, ("source_subdir",)),
    ],
)
def test_paths_are_bounded_in_length_and_per_component_and_hold_no_nul(name: str, path: tuple[Any, ...]) -> None:
    action, base = a.BY_NAME[name], VALID[name]
    # Absolute where the field must be (and under the mount path where the workdir must be).
    stem = "/workspace/" if path[-1] in ("workdir", "mount_path", "host_path", "cwd") else ""
    if name == a.EXEC.name and path[-1] == "mount_path":
        base = {**base, "workdir": "/workspace"}
    assert "component" in refused(action, with_field(base, path, stem + "x" * 300))
    assert f"shorter than {bounds.MAX_PATH_BYTES}" in refused(action, with_field(base, path, stem + "ab/" * 2000))
    assert "NUL" in refused(action, with_field(base, path, stem + "a\0b"))


def test_a_300_character_file_name_is_refused_at_once() -> None:
    assert "component" in refused(a.FS_REMOVE, {"session_id": "s", "path": "x" * 300})


def test_offsets_lengths_and_counts_are_bounded() -> None:
    read, write = VALID[a.FS_READ.name], VALID[a.FS_WRITE.name]
    refused(a.FS_READ, {**read, "offset": 2**63})
    refused(a.FS_WRITE, {**write, "offset": 2**63})
    parse_request(a.FS_READ, {**read, "offset": bounds.MAX_FILE_OFFSET})
    refused(a.FS_READ, {**read, "length": 9 * MIB})
    refused(a.FS_WRITE, {**write, "data": "x" * (9 * MIB)})
    refused(a.FS_WRITE, {**write, "data": "é" * (5 * MIB)})  # 10 MiB of UTF-8
    refused(a.FS_WRITE, {**write, "data": "A" * (12 * MIB), "encoding": "base64"})
    refused(a.FS_LIST, {**VALID[a.FS_LIST.name], "max_entries": 10**9})
    chunk = VALID[a.FILE_CHUNK.name]
    refused(a.FILE_CHUNK, {**chunk, "chunk_amount": 2**70})
    refused(a.FILE_CHUNK, {**chunk, "file_length": 2**70})
    refused(a.FILE_CHUNK, {**chunk, "chunk_size": -1})
    refused(a.EXEC_INPUT, {"exec_id": "e", "data": "A" * (16 * MIB)})
    refused(a.EXEC_INPUT, {"exec_id": "e" * 100})
    process = VALID[a.START_PROCESS.name]
    refused(a.GET_PROCESS, {**VALID[a.GET_PROCESS.name], "process_id": "p" * 200})
    refused(a.START_PROCESS, with_field(process, ("spec", "process_id"), "p" * 200))
    refused(a.INSTALL_SKILL_ZIP, {**VALID[a.INSTALL_SKILL_ZIP.name], "source_paths": ["a"] * 5000})
    refused(a.EXEC, {**SPEC, "extra_mounts": [SPEC["extra_mounts"][0]] * 65})


def test_timeouts_are_bounded_below_what_the_agent_can_wait() -> None:
    assert "at most" in refused(a.EXEC, {**SPEC, "timeout_sec": 30 * 24 * 3600})
    assert "at most" in refused(a.EXEC_STREAM, {**SPEC, "timeout_sec": 2**70})
    parse_request(a.EXEC, {**SPEC, "timeout_sec": bounds.MAX_TIMEOUT_SEC})
    assert bounds.MAX_TIMEOUT_SEC * 1000 < 2**31  # the agent's select() takes int milliseconds


def test_resources_are_finite_and_bounded() -> None:
    for field, value in [
        ("cpus", float("nan")),
        ("cpus", float("inf")),
        ("cpus", 1e9),
        ("cpus", 1e-9),
        ("memory_mb", 2**40),
        ("pids_limit", 2**40),
        ("workspace_quota_mb", 2**40),
    ]:
        refused(a.CREATE_SESSION, {**SPEC, field: value})


@pytest.mark.parametrize(
    "image",
    [
        "INVALID::ref",
        "Upper/Case",
        "",
        " alpine",
        "a" * 300,
        "alpine:" + "t" * 200,
        "alpine@sha256:short",
        "http://registry/x",
    ],
)
def test_an_invalid_image_reference_is_a_validation_error(image: str) -> None:
    assert "image" in refused(a.CREATE_SESSION, {**SPEC, "image": image})


@pytest.mark.parametrize(
    "image",
    [
        "alpine",
        "alpine:3",
        "python:3.12-slim",
        "rockchin/langbot-sandbox:latest",
        "boxruntime/sandbox:latest",
        "localhost:5000/team/tool:v1.2",
        "registry.example.com/a__b/c-d.e:tag_1",
        f"python@sha256:{HEX64}",
        f"ghcr.io/org/img:1@sha256:{HEX64}",
        f"sha256:{HEX64}",
    ],
)
def test_valid_image_references_pass(image: str) -> None:
    parse_request(a.CREATE_SESSION, {**SPEC, "image": image})


def test_ids_and_names_are_bounded() -> None:
    refused(a.GET_SESSION, {"session_id": "s" * 600})
    refused(a.GET_SESSION, {"session_id": "a\nb"})
    refused(a.GET_SKILL, {"name": "n" * 600})
    refused(a.UPSERT_ADMISSION_GRANT, {**GRANT, "instance_uuid": "i" * 600})


def test_admission_numbers_and_dates_cannot_overflow() -> None:
    refused(a.UPSERT_ADMISSION_GRANT, {**GRANT, "execution_generation": 2**70})
    refused(a.UPSERT_ADMISSION_GRANT, {**GRANT, "max_sessions": 2**70})
    refused(a.REVOKE_ADMISSION_GRANT, {**VALID[a.REVOKE_ADMISSION_GRANT.name], "entitlement_revision": 2**70})
    # Year 9999 at UTC-5 is year 10000 in UTC: an OverflowError unless the model catches it.
    late = dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))).isoformat()
    refused(a.UPSERT_ADMISSION_GRANT, {**GRANT, "expires_at": late})


def test_skill_texts_are_bounded() -> None:
    refused(a.WRITE_SKILL_FILE, {**VALID[a.WRITE_SKILL_FILE.name], "content": "x" * (9 * MIB)})
    refused(a.CREATE_SKILL, {"skill": {"name": "sk", "instructions": "x" * (9 * MIB)}})
