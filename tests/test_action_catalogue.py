"""The action catalogue (``boxruntime.models.actions``) against the daemon's handlers and the
bridge's client: every action served has an entry and every entry a handler; the client calls
only through entries; the tenancy kinds and LangBot's client timeouts are the reference's
(§A.7, §B.1, §B.2, §E.7)."""

from __future__ import annotations

import ast
import datetime as dt
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pydantic
import pytest

import langbot_bridge
from boxruntime.action_table import ActionTable
from boxruntime.config import Settings
from boxruntime.edges.server import control_actions, skill_actions
from boxruntime.errors import BoxValidationError
from boxruntime.models import (
    BackendInfo,
    Empty,
    ManagedProcessInfo,
    ManagedProcessStatus,
    NetworkMode,
    ProcessRef,
    ReadinessReport,
    SessionDetails,
    SkillUpdate,
    UpdateSkillRequest,
)
from boxruntime.models import actions as a
from boxruntime.models.action_kinds import Kind, Streamed, Unary
from boxruntime.protocol import DEFAULT_TIMEOUT, call_unary
from boxruntime.runtime.core import BoxRuntime
from boxruntime.tenancy.gate import HOST_CONTROL_ACTIONS
from boxruntime.tenancy.managed import SANDBOX_ACTIONS
from boxruntime.tenancy.service import Tenancy
from tests.test_runtime import Selector

pytestmark = pytest.mark.anyio

H, T, S = Kind.HOST_CONTROL, Kind.TENANT, Kind.SANDBOX

# LangBot 0.7.18's actions and their marks (reference §B.2), and the common actions the Box serves
# to an authenticated host connection only (§A.7).
LANGBOT_07_KINDS = {
    "__ping": H,
    "__file_chunk": H,
    "box_init": H,
    "box_upsert_sandbox_admission_grant": H,
    "box_revoke_sandbox_admission_grant": H,
    "box_verify_shared_workspace": H,
    "box_health": H,
    "box_status": T,
    "box_exec": S,
    "box_create_session": S,
    "box_get_session": S,
    "box_get_sessions": S,
    "box_delete_session": S,
    "box_start_managed_process": S,
    "box_get_managed_process": S,
    "box_stop_managed_process": S,
    "box_get_backend_info": H,
    "box_get_storage_analysis": T,
    "box_shutdown": H,
}
# LangBot 0.5.0a2's 24 actions (§B.1).
LANGBOT_05_ACTIONS = {
    "box_init",
    "box_health",
    "box_status",
    "box_exec",
    "box_create_session",
    "box_get_session",
    "box_get_sessions",
    "box_delete_session",
    "box_start_managed_process",
    "box_get_managed_process",
    "box_stop_managed_process",
    "box_get_backend_info",
    "box_list_skills",
    "box_get_skill",
    "box_create_skill",
    "box_update_skill",
    "box_delete_skill",
    "box_scan_skill_directory",
    "box_list_skill_files",
    "box_read_skill_file",
    "box_write_skill_file",
    "box_preview_skill_zip",
    "box_install_skill_zip",
    "box_shutdown",
}
# LangBot's client timeouts where they are not the 15 s default (§B.1, §B.2, §E.7; 0.7's where
# the two differ: box_create_session waits 60 s, 0.5 waited 15 s).
LANGBOT_TIMEOUTS = {
    "box_exec": 300.0,
    "box_create_session": 60.0,
    "box_delete_session": 30.0,
    "box_start_managed_process": 30.0,
    "box_stop_managed_process": 30.0,
    "box_revoke_sandbox_admission_grant": 30.0,
    "box_get_storage_analysis": 60.0,
    "box_preview_skill_zip": 60.0,
    "box_install_skill_zip": 120.0,
}
# LangBot 0.7's tenancy actions: the bridge sends no workspace context, so it has no use for them.
NOT_CALLED_BY_THE_BRIDGE = {
    a.UPSERT_ADMISSION_GRANT,
    a.REVOKE_ADMISSION_GRANT,
    a.VERIFY_SHARED_WORKSPACE,
    a.STORAGE_ANALYSIS,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[set[str]]:
    """The names a control connection of a real daemon serves (its Peer adds ``__cancel_action``)."""
    monkeypatch.setattr("boxruntime.runtime.core.select_backend", Selector())
    runtime = BoxRuntime(Settings(data_dir=tmp_path / "data", pool_size=0))
    await runtime.start()
    try:
        yield set(control_actions(Tenancy(runtime), skill_actions(runtime.settings)))
    finally:
        await runtime.close()


def test_names_are_unique_and_every_entry_is_listed() -> None:
    entries = [value for value in vars(a).values() if isinstance(value, Unary | Streamed)]
    assert len(a.ACTIONS) == len(a.BY_NAME) == len(entries)
    assert set(a.ACTIONS) == set(entries)


async def test_every_served_action_has_an_entry_and_every_entry_a_handler(served: set[str]) -> None:
    assert served == set(a.BY_NAME)


def test_langbot_actions_are_all_in_the_catalogue_with_their_kind() -> None:
    assert set(a.BY_NAME) >= LANGBOT_05_ACTIONS
    assert {name: a.BY_NAME[name].kind for name in LANGBOT_07_KINDS} == LANGBOT_07_KINDS
    # The gate and admission read the kinds from the catalogue.
    assert a.names(H) | {"__cancel_action"} == HOST_CONTROL_ACTIONS
    assert a.names(S) == SANDBOX_ACTIONS


def test_timeouts_are_langbots_and_ours_never_shorter() -> None:
    assert a.DEFAULT == DEFAULT_TIMEOUT
    for action in a.ACTIONS:
        if action.name not in LANGBOT_07_KINDS and action.name not in LANGBOT_05_ACTIONS:
            assert action.langbot_timeout is None, action.name  # LangBot never calls ours
            continue
        assert action.langbot_timeout == LANGBOT_TIMEOUTS.get(action.name, DEFAULT_TIMEOUT), action.name
        if action not in (a.EXEC, a.EXEC_STREAM, a.EXEC_INTERACTIVE):  # those add the command's own limit
            assert action.timeout >= action.langbot_timeout, action.name


def test_every_shape_resolves_and_builds() -> None:
    for action in a.ACTIONS:
        shapes = [action.request, action.items if isinstance(action, Streamed) else action.response]
        for shape in shapes:
            pydantic.TypeAdapter(shape.type).core_schema  # noqa: B018 - builds it, or raises


async def test_a_request_that_does_not_fit_is_a_validation_error_and_unknown_keys_are_ignored() -> None:
    table = ActionTable()

    async def get_process(ref: ProcessRef) -> ManagedProcessInfo:
        return ManagedProcessInfo(
            session_id=ref.session_id,
            process_id=ref.process_id,
            status=ManagedProcessStatus.EXITED,
            command="true",
            args=[],
            cwd="/workspace",
            env_keys=[],
            started_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        )

    table.unary(a.GET_PROCESS, get_process)
    handler = table.wire()[a.GET_PROCESS.name]
    with pytest.raises(BoxValidationError, match="session_id"):
        await call_unary(handler, {"process_id": "p"})
    answer = await call_unary(handler, {"session_id": "s", "from_a_newer_client": 1})
    assert answer["session_id"] == "s" and answer["process_id"] == "default" and answer["status"] == "exited"


def test_an_action_has_one_handler_per_table() -> None:
    table = ActionTable()

    async def ping(_: Empty) -> Empty:
        return Empty()

    table.unary(a.PING, ping)
    with pytest.raises(ValueError, match="already has a handler"):
        table.unary(a.PING, ping)
    with pytest.raises(KeyError):
        table.replace(a.SHUTDOWN_SESSIONS, ping)


# ── the bridge ───────────────────────────────────────────────────────────


def _bridge_sources() -> list[Path]:
    return sorted(Path(langbot_bridge.__file__).parent.rglob("*.py"))


def test_the_bridge_names_no_action_outside_the_catalogue() -> None:
    names = set(a.BY_NAME) | {"__cancel_action"}
    found = []
    for path in _bridge_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if text in names or (text.startswith("box_") and text.isidentifier()):
                found.append(f"{path.name}:{node.lineno}: {text}")
    assert found == []


def test_the_client_calls_every_entry_but_langbot_07s_tenancy_actions() -> None:
    """Which entries the bridge reaches, read from its code (``<alias of actions>.<ENTRY>``)."""
    entries = {name for name, value in vars(a).items() if isinstance(value, Unary | Streamed)}
    used: set[str] = set()
    for path in _bridge_sources():
        tree = ast.parse(path.read_text(), str(path))
        aliases = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "boxruntime.models"
            for alias in node.names
            if alias.name == "actions"
        }
        used |= {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr in entries
        }
    assert {getattr(a, name) for name in used} == set(a.ACTIONS) - NOT_CALLED_BY_THE_BRIDGE


def test_the_catalogue_loads_no_model_and_the_client_no_skill_or_tenancy_model() -> None:
    probe = (
        "import sys, boxruntime.models.actions; "
        "before = sorted(m for m in sys.modules if m.startswith('boxruntime.models.')); "
        "import langbot_bridge.client; "
        "after = sorted(m for m in sys.modules if m.startswith('boxruntime.models.')); print(before, after)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    before, after = out.strip().split("] [")
    assert before.strip("[]") == "'boxruntime.models.action_kinds', 'boxruntime.models.actions'"
    assert "skills" not in after and "tenancy" not in after


# ── wire forms the models now carry themselves ───────────────────────────


def test_a_skill_update_sends_only_the_fields_that_were_set() -> None:
    request = UpdateSkillRequest(name="pdf", skill=SkillUpdate(display_name=None, description="d"))
    assert a.UPDATE_SKILL.request.dump(request) == {"name": "pdf", "skill": {"display_name": None, "description": "d"}}
    assert a.UPDATE_SKILL.request.parse({"name": "pdf", "skill": {}}).skill.model_fields_set == set()


def test_answers_leave_out_the_keys_langbot_leaves_out() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    details = SessionDetails(
        session_id="s",
        backend_name="docker",
        backend_session_id="c",
        image="i",
        network=NetworkMode.OFF,
        created_at=now,
        last_used_at=now,
    )
    dumped = a.GET_SESSION.response.dump(details)
    assert "managed_processes" not in dumped and "managed_process" not in dumped and dumped["host_path"] is None
    ready = ReadinessReport(ready=True, mode="standard", backend={"name": "docker"}, checks={"backend_available": True})
    assert a.HEALTH.response.dump(ready) == {
        "ready": True,
        "mode": "standard",
        "backend": {"name": "docker"},
        "checks": {"backend_available": True},
    }
    assert isinstance(a.HEALTH.response.parse({"name": "docker", "available": True}), BackendInfo)
    assert isinstance(a.HEALTH.response.parse(a.HEALTH.response.dump(ready)), ReadinessReport)
