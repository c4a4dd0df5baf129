"""Installing an MCP server's package into its session before the server starts.

``pip install --target`` into the session's workspace, run as one exec with the server's
environment (so a pip provided on a mounted ``PYTHONPATH`` is found). A finished install
leaves a marker holding the install's digest; the same install in the same session is then
skipped, so restarting a server (or a bot) does not reinstall it.

An install from the package index needs network: a session with network off is refused
before pip runs, with what to change, instead of pip timing out on name resolution.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping
from typing import Any

from boxruntime.errors import BoxValidationError
from boxruntime.models import NetworkMode
from langbot_bridge.mcp.errors import McpInstallError
from langbot_bridge.mcp.spec import INSTALL_MARKER, McpInstall, McpServerSpec
from langbot_bridge.service import BoxService

SKIPPED = "boxruntime: already installed"
OUTPUT_TAIL_CHARS = 2000


def install_script(install: McpInstall, target: str) -> str:
    """The shell script that installs once: skip when the marker matches, else pip, then mark."""
    marker = shlex.quote(posixpath.join(target, INSTALL_MARKER))
    digest = shlex.quote(install.digest())
    pip_args = ["install", "--target", target, "--upgrade", "--no-input", "--disable-pip-version-check"]
    if install.find_links is not None:
        pip_args += ["--no-index", "--find-links", install.find_links]
    pip = shlex.join([*install.pip, *pip_args, *install.requirements])
    return (
        f'if [ "$(cat {marker} 2>/dev/null)" = {digest} ]; then echo {shlex.quote(SKIPPED)}; exit 0; fi\n'
        f"{pip} && printf %s {digest} > {marker}"
    )


async def ensure_installed(
    service: BoxService, session_id: str, spec: McpServerSpec, request: Mapping[str, Any]
) -> bool:
    """Install ``spec.install`` into the (existing) session; False when it was already there.

    The exec's time limit is the install's ``timeout_sec``, clamped by the service profile's
    ``max_timeout_sec`` like every exec."""
    install, target = spec.install, spec.install_target()
    if install is None or target is None:
        return False
    if install.find_links is None:
        session = await service.client.get_session(session_id)
        if session.network == NetworkMode.OFF:
            raise BoxValidationError(
                f"MCP server {spec.name!r} installs {install.describe()!r} from the package index, which needs "
                f"network access, but session {session_id} has network off. Give its session network 'on' "
                "(e.g. McpHub(session_request={'network': 'on'})), or set install.find_links to a wheel "
                "directory mounted into the session."
            )
    result = await service.exec(
        session_id,
        install_script(install, target),
        {**request, "env": {**request.get("env", {}), **spec.env}, "timeout_sec": install.timeout_sec},
        actor="mcp",
        audit_command=f"pip install {install.describe()} (MCP server {spec.name})",
    )
    if not result.ok:
        how = f"exit code {result.exit_code}" if result.exit_code is not None else result.status.value
        output = (result.stderr.strip() or result.stdout.strip())[-OUTPUT_TAIL_CHARS:]
        raise McpInstallError(
            spec.name, f"installing {install.describe()!r} for MCP server {spec.name!r} failed ({how}):\n{output}"
        )
    return SKIPPED not in result.stdout
