"""Typed errors for MCP servers run in a Box session.

They extend the ``boxruntime.errors`` family so a bot catches them with the rest; each says
which server failed and what to do about it.
"""

from __future__ import annotations

from typing import Any

from boxruntime.errors import BoxError, BoxRuntimeUnavailableError
from boxruntime.models import ManagedProcessInfo

STDERR_TAIL_CHARS = 1500  # of the daemon's ~4000-character preview, what fits in a message


class McpServerError(BoxError):
    """An MCP server in a Box session failed; ``server`` names it."""

    def __init__(self, server: str, message: str) -> None:
        super().__init__(message)
        self.server = server


class McpServerCrashedError(McpServerError):
    """The server's process exited on its own; ``exit_code`` and ``stderr_preview`` say how."""

    def __init__(self, server: str, info: ManagedProcessInfo) -> None:
        self.exit_code = info.exit_code
        self.stderr_preview = info.stderr_preview
        self.info = info
        code = "by a signal" if info.exit_code is None else f"with code {info.exit_code}"
        tail = info.stderr_preview[-STDERR_TAIL_CHARS:].strip()
        stderr = f"; its stderr ends with:\n{tail}" if tail else "; it wrote nothing to stderr"
        super().__init__(
            server,
            f"MCP server {server!r} (process {info.process_id} in session {info.session_id}) exited {code}{stderr}",
        )


class McpServerStoppedError(McpServerError):
    """The server's process (or its session) is gone: someone stopped or deleted it."""


class McpRelayLostError(McpServerError, BoxRuntimeUnavailableError):
    """The server still runs, but its relay could not be reached again; retry later."""


class McpTimeoutError(McpServerError):
    """A request got no answer in time (the server may still be working on it)."""


class McpRequestError(McpServerError):
    """The server answered a request with a JSON-RPC error (``code``, ``data``)."""

    def __init__(self, server: str, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(server, f"MCP server {server!r} refused {method}: {message} (JSON-RPC error {code})")
        self.method = method
        self.code = code
        self.data = data


class McpInstallError(McpServerError):
    """Installing the server's package into the session failed."""
