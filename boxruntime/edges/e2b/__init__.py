"""E2B's API on the daemon's own port, so the stock ``e2b`` SDK works against boxruntime.

Set ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` to the daemon's address (and ``E2B_API_KEY`` to the
daemon's token, or anything when it has none). The control plane (control.py) makes E2B
sandboxes as ordinary sessions (sandboxes.py); envd (envd_routes.py: processes, files,
``/files``, ``/health``) is served over the runtime's commands and file operations, routed by
the ``E2b-Sandbox-Id`` header. A protocol adapter: no session state of its own beyond E2B's
mapping.
"""

from __future__ import annotations

from aiohttp import web

from boxruntime.edges.e2b.control import ControlPlane
from boxruntime.edges.e2b.envd_routes import Envd
from boxruntime.edges.e2b.sandboxes import Sandboxes
from boxruntime.runtime.core import BoxRuntime


def add_e2b_routes(app: web.Application, runtime: BoxRuntime, token: str | None) -> None:
    sandboxes = Sandboxes(runtime, token_required=token is not None)
    app.add_routes(ControlPlane(sandboxes, token).routes())
    app.add_routes(Envd(sandboxes).routes())
