"""What the ACP tests run inside sandboxes: a scripted ACP agent built with the official
``agent-client-protocol`` SDK, and the SDK with everything it imports, copied from this venv into a
directory mounted read-only into each chat's sandbox (sandboxes have no pip and no network)."""

from __future__ import annotations

from pathlib import Path

from integration_tests.mcp_site import copy_distributions

SITE_MOUNT = "/opt/acp-site"
AGENT_MODULE = "acp_fixture_agent"

# A scripted agent: it answers in streamed chunks, names its session, turn, working directory
# and host (so a test can tell which sandbox and which ACP session answered), asks for
# permission when told to, and can load a session it still holds (session/load).
AGENT = r"""
import asyncio
import os
import socket

from acp import PROTOCOL_VERSION, RequestError, run_agent, update_agent_message_text
from acp.schema import (
    AgentCapabilities,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PermissionOption,
    PromptResponse,
    ToolCallUpdate,
)


class Scripted:
    def __init__(self):
        self.client = None
        self.sessions = {}

    def on_connect(self, conn):
        self.client = conn

    async def initialize(self, protocol_version, client_capabilities=None, client_info=None, **kwargs):
        capabilities = AgentCapabilities(load_session=True)
        return InitializeResponse(protocol_version=PROTOCOL_VERSION, agent_capabilities=capabilities)

    async def new_session(self, cwd, mcp_servers=None, **kwargs):
        session_id = f"sess-{len(self.sessions) + 1}-{os.getpid()}"
        self.sessions[session_id] = {"turns": 0, "cwd": cwd}
        return NewSessionResponse(session_id=session_id)

    async def load_session(self, cwd, session_id, mcp_servers=None, **kwargs):
        if session_id not in self.sessions:
            raise RequestError.invalid_params({"sessionId": "unknown session"})
        return LoadSessionResponse()

    async def prompt(self, prompt, session_id, **kwargs):
        text = "".join(getattr(block, "text", "") for block in prompt)
        session = self.sessions[session_id]
        session["turns"] += 1
        if text.startswith("perm"):
            options = [
                PermissionOption(option_id="yes", name="Allow", kind="allow_once"),
                PermissionOption(option_id="no", name="Reject", kind="reject_once"),
            ]
            tool = ToolCallUpdate(tool_call_id="write-1", title="write notes.txt")
            answer = await self.client.request_permission(session_id=session_id, tool_call=tool, options=options)
            outcome = answer.outcome
            reply = f"permission: {getattr(outcome, 'option_id', outcome.outcome)}"
        else:
            reply = (
                f"{text} | turn {session['turns']} of {session_id} | cwd {session['cwd']} {os.getcwd()}"
                f" | host {socket.gethostname()}"
            )
        for start in range(0, len(reply), 12):
            chunk = update_agent_message_text(reply[start : start + 12])
            await self.client.session_update(session_id=session_id, update=chunk)
            await asyncio.sleep(0.02)
        return PromptResponse(stop_reason="end_turn")


asyncio.run(run_agent(Scripted()))
"""


def build_acp_root(root: Path) -> Path:
    """``root/site``: the ACP SDK and its requirements, and the scripted agent."""
    site = root / "site"
    site.mkdir(parents=True)
    copy_distributions(["agent-client-protocol"], site)
    (site / f"{AGENT_MODULE}.py").write_text(AGENT)
    for path in [root, *root.rglob("*")]:  # readable by the sandbox's unprivileged user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root
