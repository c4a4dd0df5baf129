"""LangBot 0.7 tenancy (reference §A.9): ids, the generation fence, and the gate in front of the real
action table, over the in-memory backend. LangBot's real client against the daemon process is in
langbot4_tests/."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from boxruntime.config import Settings
from boxruntime.edges.handlers import BoxActions
from boxruntime.edges.server import skill_actions
from boxruntime.errors import (
    BoxAdmissionError,
    BoxPermissionError,
    BoxReadinessError,
    BoxSessionNotFoundError,
    BoxValidationError,
)
from boxruntime.protocol import ActionHandler
from boxruntime.protocol.envelope import Request
from boxruntime.runtime.core import BoxRuntime
from boxruntime.tenancy.fence import GenerationFence
from boxruntime.tenancy.gate import TenantGate
from boxruntime.tenancy.placement import Placement, Workspace, is_physical_id, sanitize_session_id
from boxruntime.tenancy.service import Tenancy
from boxruntime.tenancy.trust import TrustedInstance, relay_placement
from tests.test_runtime import Selector

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ── ids ──────────────────────────────────────────────────────────────────


def test_physical_ids_are_langbots() -> None:
    # The example captured from LangBot 0.7 (reference §A.9).
    placement = Placement(Workspace("inst", "ws"), 3)
    assert placement.physical("my session/1") == "ws-108378aeed2d7cca4480d35e-g3-my-session-1"
    assert placement.logical("ws-108378aeed2d7cca4480d35e-g3-my-session-1") == "my session/1".replace(" ", "-").replace(
        "/", "-"
    )
    assert is_physical_id(placement.physical("x")) and not is_physical_id("chat_42")


@pytest.mark.parametrize("bad", ["", "   ", "///", "!!"])
def test_a_session_id_with_nothing_left_after_sanitising_is_refused(bad: str) -> None:
    with pytest.raises(BoxValidationError):
        sanitize_session_id(bad)


def test_sibling_placements_of_one_workspace() -> None:
    ws = Workspace("inst", "ws")
    g1, g2, g12 = Placement(ws, 1), Placement(ws, 2), Placement(ws, 12)
    other = Placement(Workspace("inst", "other"), 1)
    assert g2.is_older_sibling(g1.physical("a")) and g2.is_older_sibling(g12.physical("a"))
    assert not g1.is_older_sibling(g1.physical("a")) and not g1.is_older_sibling(other.physical("a"))
    assert g1.owns(g1.physical("a")) and not g1.owns(g12.physical("a")) and not g1.owns(g1.prefix)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-LangBot-Workspace-Id": "w", "X-LangBot-Placement-Generation": "2"}, 2),
        ({"X-LangBot-Workspace-Id": "w", "X-LangBot-Placement-Generation": "02"}, None),
        ({"X-LangBot-Workspace-Id": "w", "X-LangBot-Placement-Generation": "+2"}, None),
        ({"X-LangBot-Workspace-Id": "w", "X-LangBot-Placement-Generation": "0"}, None),
        ({"X-LangBot-Workspace-Id": "w", "X-LangBot-Placement-Generation": "\u0661"}, None),
        ({"X-LangBot-Workspace-Id": "", "X-LangBot-Placement-Generation": "1"}, None),
        ({"X-LangBot-Workspace-Id": "w" * 257, "X-LangBot-Placement-Generation": "1"}, None),
        ({"X-LangBot-Workspace-Id": "w"}, None),
    ],
)
def test_relay_placement_headers_must_be_canonical(headers: dict[str, str], expected: int | None) -> None:
    placement = relay_placement(headers, "inst")
    assert (placement.generation if placement else None) == expected


def test_trust_on_first_use_then_constant() -> None:
    trust = TrustedInstance()
    assert not trust.admit("a", pin=False) and trust.value is None
    assert trust.admit("a", pin=True) and trust.value == "a"
    assert trust.admit("a", pin=True) and not trust.admit("b", pin=True) and trust.value == "a"
    assert not TrustedInstance("pinned").admit("other", pin=True)


# ── the fence ────────────────────────────────────────────────────────────


async def test_the_fence_refuses_older_and_cancels_older_requests() -> None:
    fence = GenerationFence()
    ws = Workspace("inst", "ws")
    g1, g2 = Placement(ws, 1), Placement(ws, 2)
    assert fence.observe(g1) and not fence.observe(g1)
    scope = anyio.CancelScope()
    stale = anyio.Event()

    async def relay_waits() -> None:
        await fence.wait_stale(g1)
        stale.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(relay_waits)
        with fence.request(g1, scope), scope:
            assert fence.observe(g2)  # a newer generation arrives while the g1 request runs
            await anyio.sleep_forever()
    assert scope.cancelled_caught and stale.is_set()
    with pytest.raises(BoxPermissionError, match="Stale Box placement generation"):
        fence.observe(g1)
    assert fence.is_current(g2) and not fence.is_current(g1)


def test_the_fence_is_bounded() -> None:
    fence = GenerationFence(lambda: 2)
    fence.observe(Placement(Workspace("i", "a"), 1))
    fence.observe(Placement(Workspace("i", "b"), 1))
    fence.observe(Placement(Workspace("i", "a"), 5))  # known workspaces still advance
    with pytest.raises(BoxPermissionError, match="capacity"):
        fence.observe(Placement(Workspace("i", "c"), 1))


# ── the gate in front of the real action table ───────────────────────────


class Tenant:
    """One control connection's gate over the daemon's real action table."""

    def __init__(self, tenancy: Tenancy, *, identified: bool, token: bool = True) -> None:
        self.tenancy = tenancy
        self.actions: dict[str, ActionHandler] = tenancy.actions(
            BoxActions(tenancy.runtime, skill_actions(tenancy.runtime.settings)).table()
        ).wire()
        self.gate = TenantGate(tenancy, identified=identified, host_backend_allowed=token)
        self._seq = itertools.count(1)

    async def call(self, action: str, data: dict[str, Any] | None = None, ctx: dict[str, Any] | None = None) -> Any:
        request = Request(next(self._seq), action, data or {}, ctx)
        result = self.gate(request, self.actions[action])
        assert not isinstance(result, AsyncIterator)
        return await result


def ctx(workspace: str, generation: int = 1, instance: str = "inst-1") -> dict[str, Any]:
    return {"instance_uuid": instance, "workspace_uuid": workspace, "placement_generation": generation}


@pytest.fixture
async def tenancy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Tenancy]:
    selector = Selector()
    monkeypatch.setattr("boxruntime.runtime.core.select_backend", selector)
    runtime = BoxRuntime(Settings(data_dir=tmp_path / "data", trusted_instance="inst-1", pool_size=0))
    await runtime.start()
    try:
        yield Tenancy(runtime)
    finally:
        await runtime.close()


async def test_two_workspaces_share_a_logical_id_without_sharing_a_session(tenancy: Tenancy) -> None:
    lb = Tenant(tenancy, identified=True)
    a = await lb.call("box_exec", {"session_id": "shared", "cmd": "true"}, ctx("ws-a"))
    b = await lb.call("box_exec", {"session_id": "shared", "cmd": "true", "memory_mb": 256}, ctx("ws-b"))
    assert a["session_id"] == b["session_id"] == "shared"
    physical = sorted(s.session_id for s in tenancy.runtime.sessions.sessions())
    assert len(physical) == 2 and all(is_physical_id(p) and p.endswith("-g1-shared") for p in physical)
    listed = await lb.call("box_get_sessions", {}, ctx("ws-a"))
    assert [s["session_id"] for s in listed["sessions"]] == ["shared"]
    assert listed["sessions"][0]["memory_mb"] == 512  # ws-a's, not ws-b's
    assert await lb.call("box_delete_session", {"session_id": "shared"}, ctx("ws-a")) == {"deleted": "shared"}
    assert (await lb.call("box_get_session", {"session_id": "shared"}, ctx("ws-b")))["memory_mb"] == 256
    with pytest.raises(BoxSessionNotFoundError, match=r"session ws-[0-9a-f]{24}-g1-shared not found"):
        await lb.call("box_get_session", {"session_id": "shared"}, ctx("ws-a"))


async def test_status_is_the_callers_with_langbot_07s_limits_and_capacity(tenancy: Tenancy) -> None:
    lb = Tenant(tenancy, identified=True)
    await lb.call("box_create_session", {"session_id": "one"}, ctx("ws-a"))
    await lb.call("box_create_session", {"session_id": "two"}, ctx("ws-b"))
    status = await lb.call("box_status", {}, ctx("ws-a"))
    assert status["active_sessions"] == 1
    assert status["capacity"] == {"limit": 64, "used": 1, "remaining": 62}
    assert status["limits"]["max_rpc_file_bytes"] == 20 * 1024 * 1024


async def test_contexts_must_name_the_trusted_instance(tenancy: Tenancy) -> None:
    lb = Tenant(tenancy, identified=True)
    with pytest.raises(BoxPermissionError, match="Box tenant action requires a trusted Workspace context"):
        await lb.call("box_get_sessions")
    with pytest.raises(BoxPermissionError, match="does not match the trusted instance"):
        await lb.call("box_get_sessions", {}, ctx("ws-a", instance="intruder"))
    with pytest.raises(BoxPermissionError, match="does not match the trusted instance"):
        await lb.call("box_health", {}, ctx("ws-a", instance="intruder"))  # host control: optional, but checked
    assert (await lb.call("box_health"))["available"] is True
    with pytest.raises(BoxValidationError, match="invalid action context"):
        await lb.call("box_get_sessions", {}, {"instance_uuid": "inst-1", "workspace_uuid": "w", "extra": 1})


async def test_a_strict_07_spec_refuses_unknown_keys_and_unaddressed_artifact_mounts(tenancy: Tenancy) -> None:
    lb = Tenant(tenancy, identified=True)
    with pytest.raises(BoxValidationError, match="Extra inputs are not permitted"):
        await lb.call("box_exec", {"session_id": "s", "cmd": "true", "bogus": 1}, ctx("ws-a"))
    mount = {"host_path": "/srv/x", "mount_path": "/opt/langbot-artifacts/abc", "mode": "ro"}
    with pytest.raises(BoxValidationError, match="content-addressed"):
        await lb.call("box_exec", {"session_id": "s", "cmd": "true", "extra_mounts": [mount]}, ctx("ws-a"))
    assert len(tenancy.runtime.sessions) == 0


async def test_a_newer_generation_retires_the_older_ones_sessions_and_requests(tenancy: Tenancy) -> None:
    lb = Tenant(tenancy, identified=True)
    await lb.call("box_create_session", {"session_id": "old"}, ctx("ws-a", 1))
    await lb.call("box_create_session", {"session_id": "neighbour"}, ctx("ws-b", 1))
    fake = tenancy.runtime.sessions  # a create of generation 1 held in flight at the backend
    held = Placement(Workspace("inst-1", "ws-a"), 1).physical("in-flight")
    backend = tenancy.runtime._backend
    assert backend is not None
    gate = backend.gate(held)  # type: ignore[attr-defined]
    outcome: list[BaseException] = []

    async def old_create() -> None:
        try:
            await lb.call("box_create_session", {"session_id": "in-flight"}, ctx("ws-a", 1))
        except BoxPermissionError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(old_create)
        await anyio.wait_all_tasks_blocked()
        assert await lb.call("box_get_sessions", {}, ctx("ws-a", 2)) == {"sessions": []}
        # Retired before generation 2's request was served, not later by someone else.
        old = Placement(Workspace("inst-1", "ws-a"), 1).physical("old")
        assert old not in {s.session_id for s in fake.sessions()}
        gate.set()
    assert [str(e) for e in outcome] == ["Stale Box placement generation"]
    remaining = sorted(s.session_id for s in fake.sessions())
    assert remaining == [Placement(Workspace("inst-1", "ws-b"), 1).physical("neighbour")]
    with pytest.raises(BoxPermissionError, match="Stale Box placement generation"):
        await lb.call("box_get_sessions", {}, ctx("ws-a", 1))


async def test_a_05_client_keeps_05s_rules_but_never_reaches_a_workspace(tenancy: Tenancy) -> None:
    lb = Tenant(tenancy, identified=True)
    legacy = Tenant(tenancy, identified=False)
    await lb.call("box_create_session", {"session_id": "tenant"}, ctx("ws-a"))
    await legacy.call("box_create_session", {"session_id": "chat_1"})
    assert [s["session_id"] for s in (await legacy.call("box_get_sessions"))["sessions"]] == ["chat_1"]
    assert (await legacy.call("box_status"))["active_sessions"] == 1
    physical = Placement(Workspace("inst-1", "ws-a"), 1).physical("tenant")
    with pytest.raises(BoxValidationError, match="workspace namespace"):
        await legacy.call("box_delete_session", {"session_id": physical})
    assert len(tenancy.runtime.sessions) == 2
    # Once it sends a context it is a 0.7 client, and a contextless tenant action is refused.
    await legacy.call("box_get_sessions", {}, ctx("ws-a"))
    with pytest.raises(BoxPermissionError, match="requires a trusted Workspace context"):
        await legacy.call("box_get_sessions")


async def test_tenancy_required_refuses_contextless_tenant_actions(tenancy: Tenancy) -> None:
    tenancy.settings.tenancy_required = True
    legacy = Tenant(tenancy, identified=False)
    with pytest.raises(BoxPermissionError, match="requires a trusted Workspace context"):
        await legacy.call("box_exec", {"session_id": "s", "cmd": "true"})
    assert (await legacy.call("box_health"))["available"] is True  # host control needs no context


async def test_the_host_backend_is_refused_over_a_tokenless_websocket(tenancy: Tenancy) -> None:
    tokenless = Tenant(tenancy, identified=False, token=False)
    with pytest.raises(BoxValidationError, match="host backend requires local stdio control"):
        await tokenless.call("box_init", {"backend": "host"})
    assert tenancy.settings.backend == "local"


async def test_interactive_exec_needs_a_grant_under_admission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """box_exec_interactive runs a command in a sandbox: grant-enforced mode holds it to a grant
    as it does box_exec (a tenant action would have run it without one)."""
    monkeypatch.setattr("boxruntime.runtime.core.select_backend", Selector())
    settings = Settings(
        data_dir=tmp_path / "data", trusted_instance="inst-1", pool_size=0, admission_config={"required": True}
    )
    runtime = BoxRuntime(settings)
    await runtime.start()
    try:
        lb = Tenant(Tenancy(runtime), identified=True)
        request = Request(1, "box_exec_interactive", {"session_id": "global", "cmd": "id", "stdin": False}, ctx("ws-a"))
        stream = lb.gate(request, lb.actions["box_exec_interactive"])
        assert isinstance(stream, AsyncIterator)
        with pytest.raises((BoxAdmissionError, BoxReadinessError)):
            async for _ in stream:
                pass
        assert runtime.sessions.sessions() == []
    finally:
        await runtime.close()
