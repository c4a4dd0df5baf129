"""What a LangBot 4.11.2 workspace keeps and runs, through langbot-plugin 0.7.16's client over
WebSocket and stdio: its tenant directory (made by LangBot, as LangBot's user), the storage
analysis of LangBot's system page (reference §D.13), and MCP servers inside the box reached
through LangBot's relay URL with LangBot's headers and its MCP transport (§E.6).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from langbot_plugin.box.models import (
    BoxManagedProcessSpec,
    BoxManagedProcessStatus,
    BoxMountSpec,
    BoxSpec,
)

from langbot4_tests.client07 import LangBotLink, context, relay_headers, tenant_directory
from langbot4_tests.mcp_site import (
    BIG_RESULT_CHARS,
    SITE_MOUNT,
    fixture_server_args,
    time_server_args,
)
from langbot4_tests.relay import mcp_session

pytestmark = [pytest.mark.anyio]


# ── the tenant directory LangBot makes ───────────────────────────────────


async def test_sandbox_writes_the_tenant_directory_langbot_made(langbot: LangBotLink, host_root: Path) -> None:
    """When it shares the filesystem, LangBot makes ``<default_workspace>/tenants/ws-…`` and its
    ``.mcp/<pid>/workspace``, ``inbox/<q>``, ``outbox/<q>`` itself (os.makedirs, as its own user,
    here root). The sandbox, which does not run as root, must write there; what it writes must
    stay readable and removable by LangBot."""
    tenant = tenant_directory(host_root / "default", "ws-a")
    for sub in (".mcp/server-1/workspace", "inbox/query-1", "outbox/query-1"):
        os.makedirs(tenant / sub, exist_ok=True)
    (tenant / "inbox" / "query-1" / "photo.txt").write_text("from the chat\n")

    result = await langbot.client.execute(
        BoxSpec(
            session_id="shared",
            host_path=str(tenant),
            workdir="/workspace/sub",
            cmd=(
                "echo made here > made.txt"
                " && cat /workspace/inbox/query-1/photo.txt > /workspace/outbox/query-1/reply.txt"
                " && echo staged > /workspace/.mcp/server-1/workspace/state.txt"
                " && mkdir -p deeper/still && pwd"
            ),
        ),
        action_context=context("ws-a"),
    )
    assert result.ok, result.stderr
    assert result.stdout == "/workspace/sub"

    assert (tenant / "sub" / "made.txt").read_text() == "made here\n"
    assert (tenant / "outbox" / "query-1" / "reply.txt").read_text() == "from the chat\n"
    assert (tenant / ".mcp" / "server-1" / "workspace" / "state.txt").read_text() == "staged\n"
    # LangBot clears outboxes and staged MCP workspaces, and purges the rest at startup.
    (tenant / "outbox" / "query-1" / "reply.txt").unlink()
    shutil.rmtree(tenant / ".mcp" / "server-1")
    shutil.rmtree(tenant / "sub")
    assert sorted(p.name for p in tenant.iterdir()) == [".mcp", "inbox", "outbox"]


# ── storage analysis ─────────────────────────────────────────────────────


async def test_storage_analysis_measures_the_callers_workspace(langbot: LangBotLink, host_root: Path) -> None:
    client = langbot.client
    a, b = context("ws-a"), context("ws-b")
    tenant = tenant_directory(host_root / "default", "ws-a")
    host_files = {
        "notes.txt": 1000,
        ".mcp/server-1/workspace/server.py": 2000,
        "inbox/query-1/photo.bin": 3000,
        "outbox/query-1/report.bin": 4000,
    }
    for name, size in host_files.items():
        (tenant / name).parent.mkdir(parents=True, exist_ok=True)
        (tenant / name).write_bytes(b"x" * size)
    # A sandbox of workspace A with a private workspace (no host_path): 200 KiB in /workspace,
    # 100 KiB in /tmp, and a managed process.
    made = await client.execute(
        BoxSpec(
            session_id="work",
            cmd="head -c 204800 /dev/urandom > /workspace/blob && head -c 102400 /dev/urandom > /tmp/blob",
        ),
        action_context=a,
    )
    assert made.ok, made.stderr
    await client.start_managed_process("work", BoxManagedProcessSpec(process_id="cat", command="cat"), action_context=a)

    analysis = await client.get_storage_analysis(action_context=a)
    directories = {entry["key"]: entry for entry in analysis["directories"]}
    host = {key: directories[key] for key in ("workspace", "mcp", "inbox", "outbox")}
    assert host["workspace"]["path"] == str(tenant)
    assert host["mcp"]["path"] == str(tenant / ".mcp")
    assert host["inbox"]["path"] == str(tenant / "inbox")
    assert host["outbox"]["path"] == str(tenant / "outbox")
    for key, entry in host.items():
        assert entry["scope"] == "runtime_host"
        assert entry["exists"] is True
        assert entry["error_count"] == 0
        if key == "workspace":
            assert entry["kind"] == "root"
        else:
            assert (entry["kind"], entry["parent_key"]) == ("detail", "workspace")
    assert (host["workspace"]["size_bytes"], host["workspace"]["file_count"]) == (10_000, 4)
    assert (host["mcp"]["size_bytes"], host["mcp"]["file_count"]) == (2000, 1)
    assert (host["inbox"]["size_bytes"], host["inbox"]["file_count"]) == (3000, 1)
    assert (host["outbox"]["size_bytes"], host["outbox"]["file_count"]) == (4000, 1)

    sandbox = {key: directories[key] for key in ("session_workspaces", "session_caches", "session_temp")}
    for entry in sandbox.values():
        assert (entry["kind"], entry["scope"]) == ("root", "sandbox_sessions")
        assert entry["error_count"] == 0
    assert sandbox["session_workspaces"]["path"].startswith("/workspace")
    assert sandbox["session_workspaces"]["exists"] is True
    assert sandbox["session_workspaces"]["size_bytes"] >= 204_800  # du -sk rounds up to blocks
    assert sandbox["session_workspaces"]["file_count"] >= 1
    assert sandbox["session_temp"]["size_bytes"] >= 102_400
    assert sandbox["session_temp"]["file_count"] >= 1
    managed = directories["managed_process_workspaces"]
    assert (managed["kind"], managed["parent_key"], managed["scope"]) == (
        "detail",
        "session_workspaces",
        "sandbox_sessions",
    )
    assert managed["size_bytes"] == sandbox["session_workspaces"]["size_bytes"]
    assert analysis["size_bytes"] == sum(e["size_bytes"] for e in analysis["directories"] if e["kind"] == "root")
    assert analysis["active_sessions"] == 1
    assert analysis["managed_processes"] == 1

    # Workspace B: its own (absent) directory, no sandbox, nothing of A's.
    other = await client.get_storage_analysis(action_context=b)
    assert other["active_sessions"] == 0
    assert other["managed_processes"] == 0
    assert other["size_bytes"] == 0
    assert {entry["key"] for entry in other["directories"]} == {"workspace", "mcp", "inbox", "outbox"}
    workspace_b = next(e for e in other["directories"] if e["key"] == "workspace")
    assert workspace_b["path"] == str(tenant_directory(host_root / "default", "ws-b"))
    assert (workspace_b["exists"], workspace_b["size_bytes"]) == (False, 0)


# ── MCP in the box, through LangBot's relay ──────────────────────────────


async def test_mcp_servers_in_the_box_through_langbots_relay(langbot: LangBotLink, mcp_site: Path) -> None:
    """The real mcp-server-time, and a server with a 600 KB tool result, as managed processes of
    LangBot's shared MCP session; reached with the URL LangBot's client builds, LangBot's relay
    headers, LangBot's MCP websocket transport and the mcp SDK's ClientSession."""
    client = langbot.client
    a = context("ws-a")
    site = BoxMountSpec(host_path=str(mcp_site), mount_path=SITE_MOUNT, mode="ro")
    await client.create_session(
        BoxSpec(session_id="mcp-shared", extra_mounts=[site], persistent=True, read_only_rootfs=False),
        action_context=a,
    )
    env = {"PYTHONPATH": SITE_MOUNT}
    for process_id, args in (("time-server", time_server_args()), ("fixture-server", fixture_server_args())):
        info = await client.start_managed_process(
            "mcp-shared",
            BoxManagedProcessSpec(process_id=process_id, command="python3", args=args, env=env),
            action_context=a,
        )
        assert (info.session_id, info.process_id, info.status) == (
            "mcp-shared",
            process_id,
            BoxManagedProcessStatus.RUNNING,
        )

    async with mcp_session(langbot.relay_url(a, "mcp-shared", "time-server"), relay_headers(a)) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert {"get_current_time", "convert_time"} <= tools
        now = await session.call_tool("get_current_time", {"timezone": "UTC"})
        assert not now.isError
        assert json.loads(now.content[0].text)["timezone"] == "UTC"
        attached = await client.get_managed_process("mcp-shared", "time-server", action_context=a)
        assert attached.attached is True

    async with mcp_session(langbot.relay_url(a, "mcp-shared", "fixture-server"), relay_headers(a)) as session:
        big = await session.call_tool("big", {"size": BIG_RESULT_CHARS})
        assert not big.isError
        text = big.content[0].text
        assert len(text) == BIG_RESULT_CHARS
        assert text == "".join(chr(ord("a") + i % 26) for i in range(BIG_RESULT_CHARS))
        echoed = await session.call_tool("echo", {"text": "héllo ✓ 世界"})
        assert echoed.content[0].text == "héllo ✓ 世界"

    # Detaching never stops a server; LangBot re-attaches to it after a transport drop.
    again = await client.get_managed_process("mcp-shared", "time-server", action_context=a)
    assert again.status == BoxManagedProcessStatus.RUNNING
    async with mcp_session(langbot.relay_url(a, "mcp-shared", "time-server"), relay_headers(a)) as session:
        assert not (await session.call_tool("get_current_time", {"timezone": "Europe/Paris"})).isError
