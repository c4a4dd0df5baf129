"""``sbx.processes``: long-lived processes in the sandbox (managed processes).

A managed process runs in its own process group beside the sandbox's commands: no command's
timeout touches it, and while one runs the daemon never removes its sandbox for being idle.
Its stdio is reached through the daemon's relay (one line per message), which is how
``sbx.mcp`` talks to MCP servers; for plain output use a background command instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from boxruntime.models import ManagedProcessInfo, ManagedProcessSpec

if TYPE_CHECKING:
    from langbot_bridge.sandbox.sandbox import Sandbox


class Processes:
    """Managed processes in one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def start(
        self,
        command: str,
        args: Sequence[str] = (),
        *,
        process_id: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str = "/workspace",
    ) -> ManagedProcessInfo:
        """Start ``command args…`` (not through a shell); a running process with the same
        ``process_id`` is replaced. The id defaults to a new one; the info says which."""
        sandbox = self._sandbox
        spec = ManagedProcessSpec(
            process_id=process_id or f"proc-{secrets.token_hex(4)}",
            command=command,
            args=list(args),
            env=dict(env or {}),
            cwd=cwd,
        )
        return await sandbox.service.start_process(sandbox.sandbox_id, spec, sandbox.request, actor="sdk")

    async def get(self, process_id: str) -> ManagedProcessInfo:
        """The process now: running or exited (with its exit code and a stderr preview)."""
        sandbox = self._sandbox
        return await sandbox.service.client.get_managed_process(sandbox.sandbox_id, process_id)

    async def list(self) -> dict[str, ManagedProcessInfo]:
        """Every managed process of the sandbox, by id."""
        details = await self._sandbox.get_info()
        return dict(details.managed_processes or {})

    async def stop(self, process_id: str) -> None:
        """Stop it: stdin closed, SIGTERM, SIGKILL after 5 s."""
        sandbox = self._sandbox
        await sandbox.service.stop_process(sandbox.sandbox_id, process_id, actor="sdk")
