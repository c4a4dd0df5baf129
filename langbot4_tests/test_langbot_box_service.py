"""LangBot 4.11.2 itself drives the daemon: its ``BoxService`` and ``BoxRuntimeConnector`` (and on
top of them its Runner Box API and its stdio-MCP-in-box loader), unchanged, with a stand-in for
its application object (langbot_app.py).

- ``ws``: LangBot reaches an operator's daemon at ``box.runtime.endpoint``, with its control
  token from LANGBOT_BOX_CONTROL_TOKEN.
- ``stdio``: LangBot launches its local Box runtime itself. It runs ``sys.executable -m
  langbot_plugin.cli.__init__ box -s --ws-control-port 5410``; here ``sys.executable`` is
  langbot_box_python.sh, which runs ``boxruntime serve`` with that argv tail, and the port is a
  free one instead of 5410 (other test runs share this machine). LangBot only takes this path
  outside Docker: its platform check is told so, since this machine is itself a container.
  Everything else (its environment, token, pinned instance, box config, pipes) is LangBot's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langbot.pkg.box import connector as langbot_connector
from langbot.pkg.box.runner import RunnerBoxService
from langbot.pkg.box.service import BoxService
from langbot.pkg.provider.tools.loaders.mcp import MCPSessionStatus, RuntimeMCPSession
from langbot.pkg.utils import platform as langbot_platform
from langbot_plugin.api.entities.builtin.platform import message as pm
from langbot_plugin.box.errors import BoxManagedProcessNotFoundError

from langbot4_tests.client07 import tenant_directory
from langbot4_tests.daemon import (
    LANGBOT_BOX_PYTHON,
    TOKEN,
    Daemon,
    containers_of,
    daemon_settings,
    free_port,
    start_ws_daemon,
)
from langbot4_tests.langbot_app import LangBotApp, QueryStandIn, execution_context, make_app
from langbot4_tests.mcp_site import BIG_RESULT_CHARS, fixture_server_args, time_server_args

pytestmark = [pytest.mark.anyio]


@dataclass
class LangBotBox:
    app: LangBotApp
    box: BoxService
    default_workspace: Path

    def tenant(self, workspace: str) -> Path:
        return tenant_directory(self.default_workspace, workspace)


@pytest.fixture
async def langbot_box(
    anyio_backend: str,
    transport: str,
    data_dir: Path,
    host_root: Path,
    langbot_cwd: Path,
    mcp_site: Path,
    monkeypatch: pytest.MonkeyPatch,
    docker_engine: None,
) -> AsyncIterator[LangBotBox]:
    """LangBot's BoxService, initialized (its handshake: connect, ping, box_init), available."""
    box_section: dict[str, Any] = {
        "enabled": True,
        "backend": "docker",
        "local": {
            "host_root": str(host_root),
            "default_workspace": str(host_root / "default"),
            # LangBot stages MCP servers' host_path from here (its allow-list check).
            "allowed_mount_roots": [str(host_root), str(mcp_site.parent)],
        },
    }
    monkeypatch.setenv("LANGBOT_BOX_CONTROL_TOKEN", TOKEN)
    daemon: Daemon | None = None
    if transport == "ws":
        daemon = start_ws_daemon(data_dir)
        box_section["runtime"] = {"endpoint": daemon.endpoint}
    else:
        monkeypatch.setattr(langbot_platform, "get_platform", lambda: "linux")
        monkeypatch.setattr(sys, "executable", str(LANGBOT_BOX_PYTHON))
        monkeypatch.setattr(langbot_connector, "_DEFAULT_PORT", free_port())
        for name, value in daemon_settings(data_dir).items():
            monkeypatch.setenv(name, value)  # LangBot hands its own environment to the runtime
    app = make_app(box_section)
    box = BoxService(app)
    app.box_service = box
    try:
        await box.initialize()
        assert box.available, box._connector_error
        assert box.shares_filesystem_with_box is (transport == "stdio")
        yield LangBotBox(app, box, host_root / "default")
    finally:
        await box.shutdown()
        if daemon is not None:
            daemon.stop()
    assert containers_of(data_dir) == [], "the daemon left containers behind"


async def test_langbot_runs_commands_in_two_workspaces(langbot_box: LangBotBox, data_dir: Path) -> None:
    """BoxService.execute_in_context (LangBot's internal exec path): both workspaces use session
    ``shared``; each gets its own sandbox on its own tenant directory, which the sandbox (not
    root) writes; status, session lists and storage analysis are each workspace's own."""
    box, app = langbot_box.box, langbot_box.app
    for workspace in ("ws-a", "ws-b"):
        result = await box.execute_in_context(
            execution_context(app, workspace),
            {"session_id": "shared", "cmd": f"echo {workspace} > /workspace/who.txt && cat who.txt && id -u"},
        )
        assert result.ok, result.stderr
        assert result.session_id == "shared"
        name, uid = result.stdout.splitlines()
        assert name == workspace
        assert uid != "0"
        assert (langbot_box.tenant(workspace) / "who.txt").read_text() == f"{workspace}\n"

    for workspace in ("ws-a", "ws-b"):
        context = execution_context(app, workspace)
        [session] = await box.get_sessions(context)
        assert (session["session_id"], session["host_path"]) == ("shared", str(langbot_box.tenant(workspace)))
        status = await box.get_status(context)
        assert status["available"] is True
        assert status["backend"]["name"] == "docker"
        assert status["active_sessions"] == 1
        assert status["capacity"]["used"] == 1
        analysis = await box.get_storage_analysis(context)
        host = next(entry for entry in analysis["directories"] if entry["key"] == "workspace")
        assert (host["path"], host["size_bytes"], host["file_count"]) == (
            str(langbot_box.tenant(workspace)),
            len(f"{workspace}\n"),
            1,
        )
        assert analysis["active_sessions"] == 1
    assert len(containers_of(data_dir)) == 2

    # LangBot moves ws-a to generation 2 (a placement cut-over): its next exec carries the new
    # generation; generation 1's sandbox is retired, ws-b's stays.
    app.workspace_service.generations["ws-a"] = 2
    moved = await box.execute_in_context(execution_context(app, "ws-a"), {"session_id": "shared", "cmd": "cat who.txt"})
    assert moved.ok and moved.stdout == "ws-a"  # the tenant directory survives the move
    assert [s["session_id"] for s in await box.get_sessions(execution_context(app, "ws-a"))] == ["shared"]
    assert len(containers_of(data_dir)) == 2


async def test_langbot_runner_box_with_attachments(langbot_box: LangBotBox) -> None:
    """The Runner Box API (RunnerBoxService): acquire a box by reuse key, bind it to a run, import
    the chat's attachment into its inbox, run the agent's ``exec`` tool, export its outbox file.
    The same reuse key in another workspace is another box."""
    box, app = langbot_box.box, langbot_box.app
    runner = RunnerBoxService(box)
    boxes = {}
    for index, workspace in enumerate(("ws-a", "ws-b")):
        context = execution_context(app, workspace)
        attachment = pm.File(name="hello.txt", base64=base64.b64encode(f"hello from {workspace}".encode()).decode())
        query = QueryStandIn(context, index + 1, [attachment])
        acquired = await runner.acquire(context, {"reuse_key": "chat-42"}, query)
        assert acquired["id"] == "runner-" + hashlib.sha256(b"chat-42").hexdigest()
        bound = await runner.bind(context, query, "run-1", acquired["id"])
        assert bound == {"box_id": acquired["id"], "outbox": "/workspace/outbox/run-1"}

        [imported] = (await runner.import_attachments(query, None))["items"]
        assert imported["path"] == "/workspace/inbox/run-1-attachment-0/hello.txt"
        tool = await box.execute_tool(
            # LangBot makes no outbox directory: the agent does, as its prompt tells it to.
            {
                "command": f"mkdir -p /workspace/outbox/run-1 && tr a-z A-Z < {imported['path']}"
                " > /workspace/outbox/run-1/answer.txt && echo done"
            },
            query,
        )
        assert tool["ok"] is True, json.dumps(tool)
        assert tool["stdout"] == "done"
        exported = await runner.export_files(query, ["/workspace/outbox/run-1/answer.txt"])
        assert [item["name"] for item in exported["items"]] == ["answer.txt"]
        [sent] = query._box_binding.exported.values()
        assert base64.b64decode(sent["base64"].split(";base64,")[-1]) == f"HELLO FROM {workspace.upper()}".encode()
        boxes[workspace] = await runner.sessions(context)
    assert [s["session_id"] for s in boxes["ws-a"]] == [acquired["id"]]
    assert [s["session_id"] for s in boxes["ws-b"]] == [acquired["id"]]
    assert boxes["ws-a"][0]["backend_session_id"] != boxes["ws-b"][0]["backend_session_id"]


async def test_langbot_stdio_mcp_servers_in_the_box(langbot_box: LangBotBox, mcp_site: Path) -> None:
    """LangBot's whole stdio-MCP-in-box loader (RuntimeMCPSession + BoxStdioSessionRuntime):
    it stages the server's host_path into the tenant workspace, creates the shared ``mcp-shared``
    session, starts the server as a managed process, builds the relay URL and headers
    (get_managed_process_websocket_connection / get_relay_headers), connects its MCP websocket
    transport, initializes, lists tools, calls them, and stops the process on shutdown."""
    box, app = langbot_box.box, langbot_box.app
    context = execution_context(app, "ws-a")
    sessions: list[RuntimeMCPSession] = []
    try:
        for name, args in (("time", time_server_args()), ("fixture", fixture_server_args())):
            server_config = {
                "uuid": str(uuid.uuid4()),
                "name": name,
                "mode": "stdio",
                "command": "python3",
                "args": args,
                "env": {},
                # Sandboxes have no network here: the server's code comes staged from host_path.
                "box": {"host_path": str(mcp_site), "network": "off", "startup_timeout_sec": 60},
            }
            session = RuntimeMCPSession(name, server_config, True, app, context)
            sessions.append(session)
            await session.start()
            assert session.status == MCPSessionStatus.CONNECTED, session.error_message

        time_server, fixture_server = sessions
        assert {"get_current_time", "convert_time"} <= {tool.name for tool in time_server.get_tools()}
        [now] = await time_server.invoke_mcp_tool("get_current_time", {"timezone": "UTC"})
        assert json.loads(now.text)["timezone"] == "UTC"
        [big] = await fixture_server.invoke_mcp_tool("big", {"size": BIG_RESULT_CHARS})
        assert len(big.text) == BIG_RESULT_CHARS

        processes = [s.server_uuid for s in sessions]
        # One shared session for both servers ("mcp-shared-<profile hash>": network is off).
        shared = time_server._build_box_session_id()
        assert shared == fixture_server._build_box_session_id()
        assert shared.startswith("mcp-shared")
        for process_id in processes:
            info = await box.get_managed_process(context, shared, process_id)
            assert info.status.value == "running"
    finally:
        for session in sessions:
            await session.shutdown()
    # Shutdown stops each server's process; the shared session stays (LangBot never deletes it).
    for process_id in processes:
        with pytest.raises(BoxManagedProcessNotFoundError):
            await box.get_managed_process(context, shared, process_id)
    assert [s["session_id"] for s in await box.get_sessions(context)] == [shared]
    assert not (langbot_box.tenant("ws-a") / ".mcp" / processes[0]).exists()  # LangBot removed its staging
