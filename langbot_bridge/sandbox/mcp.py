"""``sbx.mcp``: MCP servers running inside the sandbox, used through the MCP SDK.

Each server is a stdio MCP server started as a managed process and reached over the daemon's
relay (``langbot_bridge.mcp.BoxMcpServer``: list and call tools, resources, prompts). Its
Python packages get into the sandbox one of three ways:

- ``packages=DIR``: a host directory made with ``pip install --target DIR <server>`` for the
  sandbox's Python, copied in once and put on ``PYTHONPATH`` (works with the default image:
  no pip, no network needed inside);
- ``install=[...]`` with ``wheels=DIR``: a host directory of wheels (``pip download``; add pip's
  own wheel when the image has no pip) copied in, then ``pip install --no-index`` inside;
- ``install=[...]`` alone: pip inside, from the package index: the image needs pip and the
  sandbox ``network="on"``;
- a mounted wheel directory: ``Sandbox(mounts={DIR: "/opt/wheels"})`` and
  ``install=McpInstall(requirements=[...], find_links="/opt/wheels")`` (with ``pip=`` naming
  pip's wheel in there when the image has none); the daemon must allow DIR
  (``--allow-mount-root``). Nothing is copied: for large or shared wheel directories.

Closing the sandbox object disconnects its servers and leaves their processes running (a
reconnected sandbox reuses them); removing the sandbox stops them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boxruntime.errors import BoxValidationError
from boxruntime.models import DEFAULT_MOUNT_PATH
from langbot_bridge.sandbox.packages import copy_tree, pip_wheel

if TYPE_CHECKING:
    from langbot_bridge.mcp import BoxMcpServer, McpInstall, McpTiming, RelayPolicy
    from langbot_bridge.sandbox.sandbox import Sandbox


class McpServers:
    """The MCP servers of one sandbox, by name."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._servers: dict[str, BoxMcpServer] = {}

    @property
    def servers(self) -> dict[str, BoxMcpServer]:
        """The servers started through this object, by name."""
        return dict(self._servers)

    def get(self, name: str) -> BoxMcpServer:
        """A started server; BoxValidationError naming the started ones if there is none."""
        server = self._servers.get(name)
        if server is None:
            known = ", ".join(sorted(self._servers)) or "none"
            raise BoxValidationError(f"no MCP server named {name!r} in this sandbox (started: {known})")
        return server

    async def start(
        self,
        name: str,
        command: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = DEFAULT_MOUNT_PATH,
        packages: Path | str | None = None,
        install: McpInstall | str | Sequence[str] | None = None,
        wheels: Path | str | None = None,
        timing: McpTiming | None = None,
        relay_policy: RelayPolicy | None = None,
    ) -> BoxMcpServer:
        """Start the stdio MCP server ``command args…`` (or reuse it if it already runs with the
        same spec) and connect to it; the returned server lists and calls its tools.

        ``packages``, ``install`` and ``wheels``: how its packages get in (see the module)."""
        from langbot_bridge.mcp import BoxMcpServer, McpInstall, McpServerSpec

        sandbox = self._sandbox
        server_env = dict(env or {})
        if packages is not None:
            site = await copy_tree(sandbox, packages, "site")
            server_env["PYTHONPATH"] = f"{site}:{server_env['PYTHONPATH']}" if server_env.get("PYTHONPATH") else site
        to_install: McpInstall | None = None
        if install is not None:
            to_install = install if isinstance(install, McpInstall) else McpInstall.model_validate(install)
            if wheels is not None:
                directory = await copy_tree(sandbox, wheels, "wheels")
                update: dict[str, Any] = {"find_links": directory}
                if (pip := pip_wheel(wheels)) is not None:
                    update["pip"] = ["python3", f"{directory}/{pip}/pip"]  # pip runs from its own wheel
                to_install = McpInstall.model_validate({**to_install.model_dump(), **update})
        elif wheels is not None:
            raise BoxValidationError("wheels= is where install= finds its packages: name them with install=[...]")
        spec = McpServerSpec(name=name, command=command, args=list(args), env=server_env, cwd=cwd, install=to_install)
        previous = self._servers.pop(name, None)
        if previous is not None:
            await previous.close(stop=previous.spec != spec)
        server = BoxMcpServer(
            sandbox.service,
            sandbox.sandbox_id,
            spec,
            session_request=sandbox.request,
            relay_policy=relay_policy,
            timing=timing,
        )
        await server.start(sandbox.host.task_group)
        self._servers[name] = server
        return server

    async def stop(self, name: str) -> None:
        """Disconnect the server and stop its process."""
        server = self.get(name)
        del self._servers[name]
        await server.close(stop=True)

    async def close(self) -> None:
        """Disconnect every server, leaving their processes running."""
        servers, self._servers = self._servers, {}
        for server in servers.values():
            await server.close(stop=False)
