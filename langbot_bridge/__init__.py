"""langbot_bridge: the client side a chat bot embeds to use a Box daemon.

- ``Connector`` — spawn a local daemon (stdio) or connect to a remote one (WebSocket + token),
  with heartbeat and reconnect.
- ``BoxClient`` — one typed async method per daemon action.
- ``BoxService`` — profiles, locked fields, mount allow-list, per-chat session ids, output
  truncation, audit log.
- ``BoxTools`` — exec/read/write/edit/glob/grep for an LLM, all run inside the sandbox.
- ``SkillService`` and helpers — install, change and mount skills (audited).
- ``langbot_bridge.mcp`` — MCP servers in a Box session (``McpHub``, ``BoxMcpServer``,
  ``McpServerSpec``); import it on its own: it loads the MCP SDK.

It imports only ``boxruntime.protocol``, ``boxruntime.models`` and ``boxruntime.errors``.
"""

from langbot_bridge.audit import AuditEntry, AuditLog
from langbot_bridge.client import ActionCaller, BoxClient, chunk_bytes
from langbot_bridge.connector import Connector, Timing
from langbot_bridge.links import RemoteTarget, SpawnTarget, websocket_url
from langbot_bridge.profiles import BoxProfile, MountPolicy, load_profiles, merge_spec
from langbot_bridge.service import BoxService, Truncated, truncate_output
from langbot_bridge.skills import SkillService, skill_files, skill_mount, skill_mounts, zip_directory
from langbot_bridge.templates import ChatContext, SessionTemplate, resolve_session_id
from langbot_bridge.tools import BoxTools

__all__ = [
    "ActionCaller",
    "AuditEntry",
    "AuditLog",
    "BoxClient",
    "BoxProfile",
    "BoxService",
    "BoxTools",
    "ChatContext",
    "Connector",
    "MountPolicy",
    "RemoteTarget",
    "SessionTemplate",
    "SkillService",
    "SpawnTarget",
    "Timing",
    "Truncated",
    "chunk_bytes",
    "load_profiles",
    "merge_spec",
    "resolve_session_id",
    "skill_files",
    "skill_mount",
    "skill_mounts",
    "truncate_output",
    "websocket_url",
    "zip_directory",
]
