"""langbot_bridge: the client side a chat bot embeds to use a Box daemon.

- ``Sandbox`` — one sandbox as an object: ``sbx.commands.run()``, ``sbx.files.write()``,
  ``sbx.processes.start()``, ``sbx.mcp.start()`` (``langbot_bridge.sandbox``).
- ``Connector`` — spawn a local daemon (stdio) or connect to a remote one (WebSocket + token),
  with heartbeat and reconnect.
- ``BoxClient`` — one typed async method per daemon action.
- ``BoxService`` — profiles, locked fields, mount allow-list, per-chat session ids, output
  truncation, whole-file reads and writes, audit log.
- ``BoxTools`` — exec/read/write/edit/glob/grep for an LLM, all run inside the sandbox.
- ``SkillService`` and helpers — install, change and mount skills (audited).
- ``langbot_bridge.mcp`` — MCP servers in a Box session (``McpHub``, ``BoxMcpServer``,
  ``McpServerSpec``); import it on its own: it loads the MCP SDK.

Names are imported when first used (``import langbot_bridge`` itself loads nothing else), so a
script pays only for what it touches. It imports only ``boxruntime.protocol``,
``boxruntime.models`` and ``boxruntime.errors`` of the daemon's package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langbot_bridge.audit import AuditEntry, AuditLog
    from langbot_bridge.client import ActionCaller, BoxClient, chunk_bytes
    from langbot_bridge.connector import Connector, Timing
    from langbot_bridge.links import RemoteTarget, SpawnTarget, websocket_url
    from langbot_bridge.profiles import BoxProfile, MountPolicy, load_profiles, merge_spec
    from langbot_bridge.sandbox import CommandExitError, CommandHandle, CommandResult, Sandbox, runtime_target
    from langbot_bridge.service import BoxService, Truncated, truncate_output
    from langbot_bridge.session_files import SessionFiles
    from langbot_bridge.skills import SkillService, skill_files, skill_mount, skill_mounts, zip_directory
    from langbot_bridge.templates import ChatContext, SessionTemplate, resolve_session_id
    from langbot_bridge.tools import BoxTools

# Where each exported name lives.
_EXPORTS = {
    "AuditEntry": "langbot_bridge.audit",
    "AuditLog": "langbot_bridge.audit",
    "ActionCaller": "langbot_bridge.client",
    "BoxClient": "langbot_bridge.client",
    "chunk_bytes": "langbot_bridge.client",
    "Connector": "langbot_bridge.connector",
    "Timing": "langbot_bridge.connector",
    "RemoteTarget": "langbot_bridge.links",
    "SpawnTarget": "langbot_bridge.links",
    "websocket_url": "langbot_bridge.links",
    "BoxProfile": "langbot_bridge.profiles",
    "MountPolicy": "langbot_bridge.profiles",
    "load_profiles": "langbot_bridge.profiles",
    "merge_spec": "langbot_bridge.profiles",
    "CommandExitError": "langbot_bridge.sandbox",
    "CommandHandle": "langbot_bridge.sandbox",
    "CommandResult": "langbot_bridge.sandbox",
    "Sandbox": "langbot_bridge.sandbox",
    "runtime_target": "langbot_bridge.sandbox",
    "BoxService": "langbot_bridge.service",
    "Truncated": "langbot_bridge.service",
    "truncate_output": "langbot_bridge.service",
    "SessionFiles": "langbot_bridge.session_files",
    "SkillService": "langbot_bridge.skills",
    "skill_files": "langbot_bridge.skills",
    "skill_mount": "langbot_bridge.skills",
    "skill_mounts": "langbot_bridge.skills",
    "zip_directory": "langbot_bridge.skills",
    "ChatContext": "langbot_bridge.templates",
    "SessionTemplate": "langbot_bridge.templates",
    "resolve_session_id": "langbot_bridge.templates",
    "BoxTools": "langbot_bridge.tools",
}

__all__ = [
    "ActionCaller",
    "AuditEntry",
    "AuditLog",
    "BoxClient",
    "BoxProfile",
    "BoxService",
    "BoxTools",
    "ChatContext",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Connector",
    "MountPolicy",
    "RemoteTarget",
    "Sandbox",
    "SessionFiles",
    "SessionTemplate",
    "SkillService",
    "SpawnTarget",
    "Timing",
    "Truncated",
    "chunk_bytes",
    "load_profiles",
    "merge_spec",
    "resolve_session_id",
    "runtime_target",
    "skill_files",
    "skill_mount",
    "skill_mounts",
    "truncate_output",
    "websocket_url",
    "zip_directory",
]


def __getattr__(name: str) -> Any:
    """Import an exported name on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'langbot_bridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The exported names (what ``from langbot_bridge import …`` offers)."""
    return sorted(__all__)
