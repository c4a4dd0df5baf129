"""LangBot 4.11.2's tenancy (reference §A.9) through langbot-plugin 0.7.16's own client, over
WebSocket and over stdio: what its workspaces must see of each other (nothing), and the
generation fence's three effects.

Each test starts from what LangBot does: one trusted instance, several workspaces, logical
session ids (``shared``, ``mcp-shared``, ``runner-…``) that collide across workspaces by design,
the workspace's tenant directory ``<default_workspace>/tenants/ws-<24 hex>`` as ``host_path``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import anyio
import pytest
from langbot_plugin.box.actions import LangBotToBoxAction
from langbot_plugin.box.errors import BoxAdmissionError, BoxError, BoxSessionNotFoundError
from langbot_plugin.box.models import (
    BoxManagedProcessSpec,
    BoxManagedProcessStatus,
    BoxSpec,
    SandboxAdmissionGrant,
    SandboxAdmissionRevocation,
)
from langbot_plugin.box.security import (
    BOX_CONTROL_TOKEN_HEADER,
    BOX_INSTANCE_HEADER,
    BOX_PLACEMENT_GENERATION_HEADER,
    BOX_WORKSPACE_HEADER,
)
from langbot_plugin.entities.io.errors import ActionCallError
from websockets.exceptions import ConnectionClosed

from langbot4_tests.client07 import INSTANCE, LangBotLink, context, physical_id, relay_headers, tenant_directory
from langbot4_tests.daemon import containers_of
from langbot4_tests.relay import connect_relay, eventually, upgrade_status

pytestmark = [pytest.mark.anyio]

FOREIGN_INSTANCE = "PermissionError: Box action context does not match the trusted instance"
NO_CONTEXT = "PermissionError: Box tenant action requires a trusted Workspace context"
STALE = "PermissionError: Stale Box placement generation"
# LangBot 0.7's box_status limits (reference §B.2, §D.1 defaults).
DEFAULT_LIMITS = {
    "max_sessions": 64,
    "max_managed_processes": 64,
    "max_completed_processes": 256,
    "max_admission_records": 100_000,
    "max_rpc_file_bytes": 20 * 1024 * 1024,
}


def cat_process(process_id: str = "cat") -> BoxManagedProcessSpec:
    return BoxManagedProcessSpec(process_id=process_id, command="cat")


async def session_ids(link: LangBotLink, workspace: str, generation: int = 1) -> list[str]:
    return sorted(
        s["session_id"] for s in await link.client.get_sessions(action_context=context(workspace, generation))
    )


# ── the same logical id in two workspaces ────────────────────────────────


@pytest.mark.parametrize("backend", ["docker", "nsjail"])
async def test_same_logical_session_in_two_workspaces_does_not_collide(
    langbot: LangBotLink, host_root: Path, data_dir: Path, backend: str
) -> None:
    """Both workspaces use ``shared`` with their own tenant directory: two sessions, each
    mounting its own directory (0.7.16's lbp box does this; a shared namespace answered
    ``BoxSessionConflictError: Box session shared already exists with host_path=…``)."""
    client = langbot.client
    for workspace in ("ws-a", "ws-b"):
        tenant = tenant_directory(host_root / "default", workspace)
        tenant.mkdir(parents=True)  # LangBot makes it itself when it shares the filesystem
        (tenant / "marker.txt").write_text(f"files of {workspace}\n")
        result = await client.execute(
            BoxSpec(session_id="shared", cmd="cat /workspace/marker.txt", host_path=str(tenant)),
            action_context=context(workspace),
        )
        assert result.ok, result.stderr
        assert result.session_id == "shared"  # the logical id comes back
        assert result.stdout == f"files of {workspace}"

    for workspace in ("ws-a", "ws-b"):
        tenant = tenant_directory(host_root / "default", workspace)
        [info] = await client.get_sessions(action_context=context(workspace))
        assert info["session_id"] == "shared"
        assert info["host_path"] == str(tenant)
        again = await client.execute(
            BoxSpec(session_id="shared", cmd="cat marker.txt", host_path=str(tenant)), action_context=context(workspace)
        )
        assert again.stdout == f"files of {workspace}"
    if backend == "docker":
        assert len(containers_of(data_dir)) == 2


# ── get / list / delete / status, scoped ─────────────────────────────────


async def test_get_list_delete_and_status_are_scoped_to_the_workspace(langbot: LangBotLink) -> None:
    client = langbot.client
    a, b = context("ws-a"), context("ws-b")
    for ctx, session_id in ((a, "s1"), (a, "only-a"), (b, "s1")):
        info = await client.create_session(BoxSpec(session_id=session_id), action_context=ctx)
        assert info["session_id"] == session_id
    process = await client.start_managed_process("s1", cat_process(), action_context=a)
    assert process.session_id == "s1"  # nested infos come back logical too
    assert process.status == BoxManagedProcessStatus.RUNNING

    assert await session_ids(langbot, "ws-a") == ["only-a", "s1"]
    assert await session_ids(langbot, "ws-b") == ["s1"]

    status_a = await client.get_status(action_context=a)
    status_b = await client.get_status(action_context=b)
    assert status_a["active_sessions"] == 2
    assert status_b["active_sessions"] == 1
    assert status_a["limits"] == DEFAULT_LIMITS
    # capacity: remaining = max(0, min(limit - used, max_sessions - all sessions)) = 64 - 3
    assert status_a["capacity"] == {"limit": 64, "used": 2, "remaining": 61}
    assert status_b["capacity"] == {"limit": 64, "used": 1, "remaining": 61}

    # B reaches nothing of A's, by any action.
    with pytest.raises(BoxSessionNotFoundError):
        await client.get_session("only-a", action_context=b)
    with pytest.raises(BoxSessionNotFoundError):
        await client.delete_session("only-a", action_context=b)
    with pytest.raises(BoxError):
        await client.get_managed_process("s1", "cat", action_context=b)
    assert (await client.get_session("only-a", action_context=a))["session_id"] == "only-a"

    # B deleting its own "s1" leaves A's "s1" (same sandbox, same process) in place.
    before = await client.get_session("s1", action_context=a)
    deleted = await langbot.call(LangBotToBoxAction.DELETE_SESSION, {"session_id": "s1"}, b)
    assert deleted == {"deleted": "s1"}
    assert await session_ids(langbot, "ws-b") == []
    after = await client.get_session("s1", action_context=a)
    assert after["session_id"] == "s1"
    assert after["backend_session_id"] == before["backend_session_id"]
    assert (await client.get_managed_process("s1", "cat", action_context=a)).status == BoxManagedProcessStatus.RUNNING
    assert (await client.execute(BoxSpec(session_id="s1", cmd="echo alive"), action_context=a)).stdout == "alive"


# ── authority: instance and context ──────────────────────────────────────


async def test_foreign_instance_and_missing_context_are_refused(langbot: LangBotLink) -> None:
    client = langbot.client
    foreign = context("ws-a", instance="another-instance")
    with pytest.raises(BoxError, match=re.escape(FOREIGN_INSTANCE)):
        await client.execute(BoxSpec(session_id="s", cmd="true"), action_context=foreign)
    with pytest.raises(BoxError, match=re.escape(FOREIGN_INSTANCE)):
        await client.get_sessions(action_context=foreign)
    # A host-control action may carry a context, but only the trusted instance's.
    with pytest.raises(ActionCallError, match=re.escape(FOREIGN_INSTANCE)):
        await langbot.call(LangBotToBoxAction.HEALTH, {}, foreign)
    assert (await langbot.call(LangBotToBoxAction.HEALTH, {}, context("ws-a")))["available"] is True

    # A tenant action without a context: LangBot 0.7's refusal, word for word.
    with pytest.raises(BoxError, match=re.escape(NO_CONTEXT)):
        await client.get_status()
    with pytest.raises(BoxError, match=re.escape(NO_CONTEXT)):
        await client.execute(BoxSpec(session_id="s", cmd="true"))
    with pytest.raises(BoxError, match=re.escape(NO_CONTEXT)):
        await client.get_sessions()
    # Host-control actions need none.
    await client.initialize()
    assert (await client.get_backend_info())["available"] is True

    assert await session_ids(langbot, "ws-a") == []  # the refused calls made nothing


async def test_admission_actions_refused_outside_admission_mode(langbot: LangBotLink) -> None:
    """Standard mode (no ``box.admission``): grants are refused as 0.7's runtime refuses them."""
    grant = SandboxAdmissionGrant(
        instance_uuid=INSTANCE,
        workspace_uuid="ws-a",
        execution_generation=1,
        entitlement_revision=1,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60),
        max_sessions=1,
        max_managed_processes=0,
    )
    not_enabled = "Sandbox admission enforcement is not enabled"
    with pytest.raises(BoxAdmissionError, match=not_enabled):
        await langbot.client.upsert_sandbox_admission_grant(grant)
    revocation = SandboxAdmissionRevocation(instance_uuid=INSTANCE, workspace_uuid="ws-a", entitlement_revision=1)
    with pytest.raises(BoxAdmissionError, match=not_enabled):
        await langbot.client.revoke_sandbox_admission_grant(revocation)


# ── the generation fence ─────────────────────────────────────────────────


async def test_stale_generation_is_refused(langbot: LangBotLink) -> None:
    client = langbot.client
    await client.create_session(BoxSpec(session_id="s"), action_context=context("ws-a", 2))
    stale = context("ws-a", 1)
    with pytest.raises(BoxError, match=re.escape(STALE)):
        await client.get_sessions(action_context=stale)
    with pytest.raises(BoxError, match=re.escape(STALE)):
        await client.execute(BoxSpec(session_id="s", cmd="true"), action_context=stale)
    with pytest.raises(BoxError, match=re.escape(STALE)):
        await client.get_status(action_context=stale)
    # The fence is per workspace; and the current generation keeps its session.
    assert await session_ids(langbot, "ws-b", 1) == []
    assert await session_ids(langbot, "ws-a", 2) == ["s"]


async def test_newer_generation_retires_the_older_one(langbot: LangBotLink, data_dir: Path, transport: str) -> None:
    """A placement cut-over: generation 2 of a workspace arrives while generation 1 has sessions,
    a managed process with an attached relay, and an exec in flight. The old sessions are
    deleted, the in-flight RPC cancelled, the relay closed; another workspace is untouched."""
    client = langbot.client
    g1, other = context("ws-a", 1), context("ws-b", 1)
    await client.create_session(BoxSpec(session_id="mcp"), action_context=g1)
    await client.start_managed_process("mcp", cat_process(), action_context=g1)
    await client.create_session(BoxSpec(session_id="keep"), action_context=other)
    url = langbot.relay_url(g1, "mcp", "cat")

    async with connect_relay(url, relay_headers(g1)) as relay:
        await relay.send("before the cut-over")
        assert (await relay.recv()).rstrip("\n") == "before the cut-over"

        slow = asyncio.create_task(
            client.execute(BoxSpec(session_id="slow", cmd="sleep 30", timeout_sec=120), action_context=g1)
        )

        async def slow_started() -> bool:
            return "slow" in await session_ids(langbot, "ws-a", 1)

        await eventually(slow_started)
        assert await session_ids(langbot, "ws-a", 2) == []  # generation 2 sees none of generation 1's

        # The exec's command would run 30 s: it must come back refused long before that.
        with anyio.fail_after(20):
            with pytest.raises(BoxError, match=re.escape(STALE)):
                await slow
            with pytest.raises(ConnectionClosed):
                while True:  # anything cat still had in flight, then the close
                    await relay.recv()

    async def only_other_workspace_left() -> bool:
        return len(containers_of(data_dir)) == 1

    await eventually(only_other_workspace_left)
    assert await upgrade_status(url, relay_headers(g1)) == 401
    with pytest.raises(BoxError, match=re.escape(STALE)):
        await client.get_managed_process("mcp", "cat", action_context=g1)
    assert await session_ids(langbot, "ws-b") == ["keep"]
    assert (await client.execute(BoxSpec(session_id="keep", cmd="echo ok"), action_context=other)).stdout == "ok"


# ── the relay's door ─────────────────────────────────────────────────────


async def test_relay_admits_only_langbots_headers_for_the_current_placement(langbot: LangBotLink) -> None:
    client = langbot.client
    a1, b1 = context("ws-a", 1), context("ws-b", 1)
    for ctx in (a1, b1):
        await client.create_session(BoxSpec(session_id="mcp"), action_context=ctx)
        await client.start_managed_process("mcp", cat_process(), action_context=ctx)
    url = langbot.relay_url(a1, "mcp", "cat")
    # LangBot's client puts the physical id in the path.
    assert url.endswith(f"/v1/sessions/{physical_id('ws-a', 'mcp')}/managed-process/cat/ws")
    good = relay_headers(a1)

    def without(name: str) -> dict[str, str]:
        return {k: v for k, v in good.items() if k != name}

    refused = {
        "another instance": {**good, BOX_INSTANCE_HEADER: "another-instance"},
        "no instance": without(BOX_INSTANCE_HEADER),
        "another workspace": {**good, BOX_WORKSPACE_HEADER: "ws-b"},
        "no workspace": without(BOX_WORKSPACE_HEADER),
        "generation 01": {**good, BOX_PLACEMENT_GENERATION_HEADER: "01"},
        "generation +1": {**good, BOX_PLACEMENT_GENERATION_HEADER: "+1"},
        "generation 0": {**good, BOX_PLACEMENT_GENERATION_HEADER: "0"},
        "generation not seen yet": {**good, BOX_PLACEMENT_GENERATION_HEADER: "2"},
        "no generation": without(BOX_PLACEMENT_GENERATION_HEADER),
        "no token": without(BOX_CONTROL_TOKEN_HEADER),
        "wrong token": {**good, BOX_CONTROL_TOKEN_HEADER: "w" * 64},
    }
    statuses = {why: await upgrade_status(url, headers) for why, headers in refused.items()}
    assert statuses == dict.fromkeys(refused, 401)
    # The logical id in the path, and the other workspace's physical id under these headers.
    logical_url = url.replace(physical_id("ws-a", "mcp"), "mcp")
    assert await upgrade_status(logical_url, good) == 401
    assert await upgrade_status(url.replace(physical_id("ws-a", "mcp"), physical_id("ws-b", "mcp")), good) == 401

    async with connect_relay(url, good) as relay:
        assert relay.subprotocol == "mcp"
        await relay.send('{"jsonrpc":"2.0","id":1,"method":"ping"}')
        assert (await relay.recv()).rstrip("\n") == '{"jsonrpc":"2.0","id":1,"method":"ping"}'

    # Once generation 2 is current, a relay naming generation 1 is refused, even to the
    # generation-2 session; generation 2's own headers are let in.
    a2 = context("ws-a", 2)
    await client.create_session(BoxSpec(session_id="mcp"), action_context=a2)
    await client.start_managed_process("mcp", cat_process(), action_context=a2)
    url2 = langbot.relay_url(a2, "mcp", "cat")
    assert await upgrade_status(url2, relay_headers(a1)) == 401
    assert await upgrade_status(url2, relay_headers(a2)) == 101
