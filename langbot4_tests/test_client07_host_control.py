"""LangBot 4.11.2's host-control side through langbot-plugin 0.7.16's client: who may open
``/rpc/ws`` (instance pinning, reference §A.9), the shared-workspace probe and the admission
grants of Cloud deployments (§B.2, §C.8, §D.12, §D.13).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from langbot_plugin.box.actions import LangBotToBoxAction
from langbot_plugin.box.errors import BoxAdmissionError, BoxError, BoxReadinessError
from langbot_plugin.box.models import (
    BoxManagedProcessSpec,
    BoxSpec,
    SandboxAdmissionGrant,
    SandboxAdmissionRevocation,
)
from langbot_plugin.box.security import BOX_SHARED_WORKSPACE_PROBE_PREFIX
from websockets.exceptions import InvalidStatus

from langbot4_tests.client07 import (
    INSTANCE,
    ControllerFailed,
    LangBotLink,
    box_config,
    context,
    control_headers,
    over_websocket,
    relay_headers,
    tenant_directory,
)
from langbot4_tests.daemon import jails_of, start_ws_daemon
from langbot4_tests.relay import upgrade_status

pytestmark = [pytest.mark.anyio]

STALE = "PermissionError: Stale Box placement generation"


async def refused_status(url: str, headers: dict[str, str], relay_base: str) -> int:
    """Open ``/rpc/ws`` with LangBot's own controller; the HTTP status it was refused with."""
    with pytest.raises(ControllerFailed) as failed:
        async with over_websocket(url, headers, relay_base):
            pass
    cause = failed.value.cause
    assert isinstance(cause, InvalidStatus), repr(cause)
    return int(cause.response.status_code)


# ── instance pinning on /rpc/ws ──────────────────────────────────────────


async def test_rpc_ws_is_pinned_to_the_first_instance(
    anyio_backend: str, data_dir: Path, langbot_cwd: Path, docker_engine: None
) -> None:
    """Without LANGBOT_BOX_TRUSTED_INSTANCE_UUID, the first authenticated connection pins its
    instance (trust on first use); from then on another instance id gets 401 before the upgrade,
    on /rpc/ws and on the relay, while the pinned instance reconnects freely."""
    daemon = start_ws_daemon(data_dir)
    try:
        async with over_websocket(daemon.url, control_headers(), daemon.relay_base) as first:
            await first.client.create_session(BoxSpec(session_id="mcp"), action_context=context("ws-a"))
            await first.client.start_managed_process(
                "mcp", BoxManagedProcessSpec(process_id="cat", command="cat"), action_context=context("ws-a")
            )
            assert await refused_status(daemon.url, control_headers("second-instance"), daemon.relay_base) == 401
            assert await refused_status(daemon.url, control_headers(token=None), daemon.relay_base) == 401
            assert await refused_status(daemon.url, control_headers(token="z" * 64), daemon.relay_base) == 401
            url = first.relay_url(context("ws-a"), "mcp", "cat")
            assert await upgrade_status(url, relay_headers(context("ws-a", instance="second-instance"))) == 401
            assert await upgrade_status(url, relay_headers(context("ws-a"))) == 101
        # Still pinned once the first connection is gone.
        assert await refused_status(daemon.url, control_headers("second-instance"), daemon.relay_base) == 401
        async with over_websocket(daemon.url, control_headers(), daemon.relay_base) as again:
            [info] = await again.client.get_sessions(action_context=context("ws-a"))
            assert info["session_id"] == "mcp"
            await again.client.delete_session("mcp", action_context=context("ws-a"))
    finally:
        daemon.stop()


async def test_rpc_ws_is_pinned_by_langbot_box_trusted_instance_uuid(
    anyio_backend: str, data_dir: Path, langbot_cwd: Path, docker_engine: None
) -> None:
    """With LANGBOT_BOX_TRUSTED_INSTANCE_UUID set, even the first connection must name it."""
    daemon = start_ws_daemon(data_dir, trusted_instance=INSTANCE)
    try:
        assert await refused_status(daemon.url, control_headers("second-instance"), daemon.relay_base) == 401
        async with over_websocket(daemon.url, control_headers(), daemon.relay_base) as link:
            assert (await link.client.get_backend_info())["available"] is True
            assert await link.client.get_sessions(action_context=context("ws-a")) == []
    finally:
        daemon.stop()


# ── the shared-workspace probe (LangBot Cloud's startup check) ───────────


async def test_verify_shared_workspace_digests_langbots_probe(langbot: LangBotLink, host_root: Path) -> None:
    """LangBot writes 64 random bytes to ``<default_workspace>/.langbot-box-volume-probe-<32
    hex>`` and compares the Box's sha256 with its own (BoxService._challenge_cloud_shared_workspace)."""
    default = host_root / "default"
    name = f"{BOX_SHARED_WORKSPACE_PROBE_PREFIX}{secrets.token_hex(16)}"
    payload = secrets.token_bytes(64)
    (default / name).write_bytes(payload)
    result = await langbot.client.verify_shared_workspace(name)
    assert result == {"marker_name": name, "sha256": hashlib.sha256(payload).hexdigest(), "size": 64}

    missing = f"{BOX_SHARED_WORKSPACE_PROBE_PREFIX}{secrets.token_hex(16)}"
    linked = f"{BOX_SHARED_WORKSPACE_PROBE_PREFIX}{secrets.token_hex(16)}"
    os.symlink(default / name, default / linked)  # never followed
    empty = f"{BOX_SHARED_WORKSPACE_PROBE_PREFIX}{secrets.token_hex(16)}"
    (default / empty).write_bytes(b"")
    for bad in (missing, linked, empty, "../escape", f"{BOX_SHARED_WORKSPACE_PROBE_PREFIX}NOTHEX"):
        with pytest.raises(BoxReadinessError):
            await langbot.client.verify_shared_workspace(bad)


# ── admission grants ─────────────────────────────────────────────────────

# LangBot Cloud's policy (``require_cloud_admission_policy``): one "global" session on nsjail, no
# managed process, grants of at most 300 s, a positive workspace quota.
CLOUD_ADMISSION = {"required": True, "workspace_quota_mb": 64}


def grant(
    workspace: str = "ws-a",
    generation: int = 1,
    revision: int = 1,
    ttl_sec: int = 120,
    max_sessions: int = 1,
    max_managed_processes: int = 0,
    instance: str = INSTANCE,
) -> SandboxAdmissionGrant:
    return SandboxAdmissionGrant(
        instance_uuid=instance,
        workspace_uuid=workspace,
        execution_generation=generation,
        entitlement_revision=revision,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl_sec),
        max_sessions=max_sessions,
        max_managed_processes=max_managed_processes,
    )


def revocation(revision: int, workspace: str = "ws-a") -> SandboxAdmissionRevocation:
    return SandboxAdmissionRevocation(instance_uuid=INSTANCE, workspace_uuid=workspace, entitlement_revision=revision)


@pytest.fixture
async def admitting(
    anyio_backend: str, data_dir: Path, host_root: Path, langbot_cwd: Path, docker_engine: None
) -> AsyncIterator[LangBotLink]:
    """A daemon LangBot Cloud reaches over WebSocket, with its admission policy on nsjail."""
    daemon = start_ws_daemon(data_dir, backend="nsjail")
    config = box_config(host_root, "nsjail", admission=CLOUD_ADMISSION)
    try:
        async with over_websocket(daemon.url, control_headers(), daemon.relay_base, config) as link:
            yield link
    finally:
        daemon.stop()
    assert jails_of(data_dir) == []


async def test_admission_is_ready_with_enforced_storage_limits(admitting: LangBotLink) -> None:
    """Our backends enforce hard storage limits, so grant-enforced mode is ready without
    LangBot's LANGBOT_BOX_ALLOW_UNSAFE_SOFT_STORAGE_LIMITS override; and LangBot Cloud's startup
    check (``_verify_cloud_runtime``: name nsjail, available) passes."""
    info = await admitting.client.get_backend_info()
    assert (info["name"], info["available"]) == ("nsjail", True)
    readiness = info["readiness"]
    health = await admitting.call(LangBotToBoxAction.HEALTH, {})
    for view in (readiness, health):
        assert view["ready"] is True, view
        assert view["mode"] == "grant_enforced"
        assert view["unsafe_soft_storage_limits"] is False
        assert view["backend"]["name"] == "nsjail"
        checks = view["checks"]
        for name in ("hard_workspace_quota", "hard_read_only_mount_quota", "bounded_ephemeral_storage", "inode_quota"):
            assert checks[name] is True, name
        assert all(checks.values()), checks
    await admitting.client.initialize()  # box_health: what ActionRPCBoxClient.initialize() sends


async def test_admission_grant_life_cycle(admitting: LangBotLink, host_root: Path) -> None:
    client = admitting.client
    a1, a2 = context("ws-a", 1), context("ws-a", 2)
    tenant = tenant_directory(host_root / "default", "ws-a")

    with pytest.raises(BoxAdmissionError, match="grant is missing"):
        await client.execute(BoxSpec(session_id="global", cmd="true"), action_context=a1)

    installed = grant()
    receipt = await client.upsert_sandbox_admission_grant(installed)
    expires_at = dt.datetime.fromisoformat(receipt.pop("expires_at").replace("Z", "+00:00"))
    assert expires_at == installed.expires_at
    assert receipt == {
        "installed": True,
        "workspace_uuid": "ws-a",
        "execution_generation": 1,
        "entitlement_revision": 1,
        "max_sessions": 1,
        "max_managed_processes": 0,
    }

    # The runtime owns the spec: the one "global" session, on the workspace's tenant directory.
    result = await client.execute(
        BoxSpec(session_id="global", cmd="pwd && echo admitted > /workspace/admitted.txt"), action_context=a1
    )
    assert result.ok, result.stderr
    assert (result.session_id, result.stdout) == ("global", "/workspace")
    assert (tenant / "admitted.txt").read_text() == "admitted\n"
    [info] = await client.get_sessions(action_context=a1)
    assert (info["session_id"], info["host_path"], info["persistent"], info["network"]) == (
        "global",
        str(tenant),
        True,
        "off",
    )
    status = await client.get_status(action_context=a1)
    assert status["capacity"]["limit"] == 1  # min(max_sessions, grant.max_sessions)

    with pytest.raises(BoxAdmissionError, match="network"):
        await client.execute(BoxSpec(session_id="global", cmd="true", network="on"), action_context=a1)
    with pytest.raises(BoxAdmissionError, match="runtime-owned"):
        await client.get_session("another", action_context=a1)
    with pytest.raises(BoxAdmissionError):
        await client.start_managed_process("global", BoxManagedProcessSpec(command="cat"), action_context=a1)
    with pytest.raises(BoxAdmissionError, match="grant is missing"):
        await client.execute(BoxSpec(session_id="global", cmd="true"), action_context=context("ws-b"))

    # Grants beyond the policy, or changing limits within one revision, are refused.
    for refused in (
        grant(max_managed_processes=1),
        grant(max_sessions=2),
        grant(ttl_sec=3600),
        grant(ttl_sec=-5),
        grant(max_sessions=0),
    ):
        with pytest.raises(BoxAdmissionError):
            await client.upsert_sandbox_admission_grant(refused)
    with pytest.raises(BoxError, match=re.escape("PermissionError")):
        await client.upsert_sandbox_admission_grant(grant(instance="another-instance"))

    # A grant for generation 2 advances the fence: generation 1 is refused (by the grant check,
    # which LangBot's server runs before the fence) and its session is gone.
    assert (await client.upsert_sandbox_admission_grant(grant(generation=2)))["execution_generation"] == 2
    with pytest.raises(BoxAdmissionError, match="another execution generation"):
        await client.get_sessions(action_context=a1)
    with pytest.raises(BoxError, match=re.escape(STALE)):
        await client.get_storage_analysis(action_context=a1)  # a tenant action outside admission
    assert await client.get_sessions(action_context=a2) == []
    assert (await client.execute(BoxSpec(session_id="global", cmd="cat admitted.txt"), action_context=a2)).ok

    # Revocation drops the sessions and leaves a tombstone for the revision.
    assert await client.revoke_sandbox_admission_grant(revocation(1)) == {
        "revoked": True,
        "workspace_uuid": "ws-a",
        "entitlement_revision": 1,
    }
    # Listing is a sandbox action too, refused without a grant; storage analysis (a tenant action
    # outside admission) shows the workspace has no session left.
    with pytest.raises(BoxAdmissionError, match="grant is missing"):
        await client.get_sessions(action_context=a2)
    assert (await client.get_storage_analysis(action_context=a2))["active_sessions"] == 0
    with pytest.raises(BoxAdmissionError, match="grant is missing"):
        await client.execute(BoxSpec(session_id="global", cmd="true"), action_context=a2)
    with pytest.raises(BoxAdmissionError, match="revoked"):
        await client.upsert_sandbox_admission_grant(grant(generation=2, revision=1))
    assert (await client.upsert_sandbox_admission_grant(grant(generation=2, revision=2)))["entitlement_revision"] == 2
    assert (await client.execute(BoxSpec(session_id="global", cmd="true"), action_context=a2)).ok
    with pytest.raises(BoxAdmissionError, match="stale"):
        await client.revoke_sandbox_admission_grant(revocation(1))
