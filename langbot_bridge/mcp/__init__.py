"""MCP in the box: stdio MCP servers run as managed processes in a Box session, used through
the MCP SDK's ``ClientSession`` over the daemon's relay.

- ``McpServerSpec`` / ``McpInstall`` — what to run, and the package to install first.
- ``BoxMcpServer`` — one server: start or reuse, list/call tools, resources, prompts; the
  relay is dialled again when it drops, without restarting the server.
- ``McpHub`` — a bot's servers in one shared session.
- ``RelayTransport`` — the SDK transport over the relay WebSocket, usable on its own.
- Errors: ``McpServerCrashedError`` (exit code, stderr preview), ``McpServerStoppedError``,
  ``McpRelayLostError``, ``McpTimeoutError``, ``McpRequestError``, ``McpInstallError``.
"""

from langbot_bridge.mcp.endpoint import RelayAddress, relay_address
from langbot_bridge.mcp.errors import (
    McpInstallError,
    McpRelayLostError,
    McpRequestError,
    McpServerCrashedError,
    McpServerError,
    McpServerStoppedError,
    McpTimeoutError,
)
from langbot_bridge.mcp.framing import RequestIdFence
from langbot_bridge.mcp.hub import DEFAULT_SCOPE, McpHub, scope_session_id
from langbot_bridge.mcp.server import BoxMcpServer, McpTiming
from langbot_bridge.mcp.spec import McpInstall, McpServerSpec, process_id_for
from langbot_bridge.mcp.transport import RelayPolicy, RelayTransport

__all__ = [
    "DEFAULT_SCOPE",
    "BoxMcpServer",
    "McpHub",
    "McpInstall",
    "McpInstallError",
    "McpRelayLostError",
    "McpRequestError",
    "McpServerCrashedError",
    "McpServerError",
    "McpServerSpec",
    "McpServerStoppedError",
    "McpTimeoutError",
    "McpTiming",
    "RelayAddress",
    "RelayPolicy",
    "RelayTransport",
    "RequestIdFence",
    "process_id_for",
    "relay_address",
    "scope_session_id",
]
