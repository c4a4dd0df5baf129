"""What every envd call goes through before its handler: which sandbox (``E2b-Sandbox-Id``),
whether it may (``X-Access-Token``), as whom, with what deadline; and how errors become
Connect codes.

When the sandbox is unknown (never made, killed, timed out) the answer is the one E2B's proxy
gives: 502 with "... was not found", from which the SDK raises ``SandboxNotRunningException``.
A port other than envd's is not served: 502 "... port is not open".
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from aiohttp import web

from boxruntime.backends.contract import SandboxFileError
from boxruntime.edges.e2b.connect import ConnectError, timeout_sec
from boxruntime.edges.e2b.sandboxes import E2BSandbox, Sandboxes, SandboxNotFound
from boxruntime.edges.e2b.users import basic_user, check_user
from boxruntime.errors import (
    BoxCapacityExceededError,
    BoxError,
    BoxManagedProcessConflictError,
    BoxManagedProcessNotFoundError,
    BoxRuntimeUnavailableError,
    BoxSandboxError,
    BoxSessionNotFoundError,
    BoxValidationError,
)

SANDBOX_HEADER = "E2b-Sandbox-Id"
PORT_HEADER = "E2b-Sandbox-Port"
ACCESS_TOKEN_HEADER = "X-Access-Token"
ENVD_PORT = "49983"
DEFAULT_KEEPALIVE_SEC = 90.0
ERRNO_CODES = {
    "ENOENT": "not_found",
    "EEXIST": "already_exists",
    "EACCES": "permission_denied",
    "EPERM": "permission_denied",
    "EROFS": "permission_denied",
    "ENOSPC": "resource_exhausted",
    "EDQUOT": "resource_exhausted",
    "ENOTDIR": "invalid_argument",
    "EISDIR": "invalid_argument",
    "EINVAL": "invalid_argument",
    "ENOTEMPTY": "invalid_argument",
}


@dataclass(frozen=True)
class EnvdCall:
    request: web.Request
    sandboxes: Sandboxes
    sandbox: E2BSandbox
    user: str
    timeout: float | None  # Connect-Timeout-Ms, in seconds

    @property
    def session_id(self) -> str:
        return self.sandbox.session_id

    def keepalive_sec(self) -> float:
        raw = self.request.headers.get("Keepalive-Ping-Interval", "")
        return float(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_KEEPALIVE_SEC


def proxy_error(status: int, message: str, sandbox_id: str | None) -> web.HTTPException:
    """An error as E2B's proxy in front of envd answers it (JSON, ``code`` is the status)."""
    body = {"code": status, "message": message, "sandboxId": sandbox_id}
    error = web.HTTPException(text=json.dumps(body), content_type="application/json")
    error.set_status(status)
    return error


def not_found(sandbox_id: str) -> web.HTTPException:
    return proxy_error(502, f"The sandbox {sandbox_id} was not found", sandbox_id)


def routed_sandbox(request: web.Request, sandboxes: Sandboxes) -> E2BSandbox:
    sandbox_id = request.headers.get(SANDBOX_HEADER)
    if not sandbox_id:
        raise proxy_error(
            400,
            f"missing {SANDBOX_HEADER} header: point E2B_SANDBOX_URL (or sandbox_url) at this daemon, "
            "as E2B_API_URL, so the SDK names the sandbox",
            None,
        )
    try:
        sandbox = sandboxes.get(sandbox_id)
    except SandboxNotFound:
        raise not_found(sandbox_id) from None
    port = request.headers.get(PORT_HEADER, ENVD_PORT)
    if port != ENVD_PORT:
        raise proxy_error(502, f"The sandbox {sandbox_id} is running but port {port} is not open", sandbox_id)
    return sandbox


def token_matches(offered: str | None, expected: str) -> bool:
    return offered is not None and hmac.compare_digest(offered.encode(), expected.encode())


def envd_call(request: web.Request, sandboxes: Sandboxes, user: str | None = None) -> EnvdCall:
    """Route and authorize a Connect call; ConnectError (or the proxy's HTTP error) if it may not go on."""
    sandbox = routed_sandbox(request, sandboxes)
    if sandbox.access_token is not None and not token_matches(
        request.headers.get(ACCESS_TOKEN_HEADER), sandbox.access_token
    ):
        raise ConnectError("unauthenticated", "invalid or missing access token (X-Access-Token)")
    name = check_user(basic_user(request) if user is None else user)
    return EnvdCall(request, sandboxes, sandbox, name, timeout_sec(request))


def connect_error(exc: BoxError) -> ConnectError:
    """The Connect error a runtime error becomes."""
    message = str(exc)
    if isinstance(exc, SandboxFileError):
        return ConnectError(ERRNO_CODES.get(exc.code, "internal"), message)
    if isinstance(exc, BoxManagedProcessNotFoundError):
        return ConnectError("not_found", message)
    if isinstance(exc, BoxManagedProcessConflictError):
        return ConnectError("failed_precondition", message)
    if isinstance(exc, BoxSessionNotFoundError):
        return ConnectError("unavailable", f"the sandbox was not found ({message})")
    if isinstance(exc, BoxCapacityExceededError):
        return ConnectError("resource_exhausted", message)
    if isinstance(exc, BoxValidationError):
        return ConnectError("invalid_argument", message)
    if isinstance(exc, BoxSandboxError | BoxRuntimeUnavailableError):
        return ConnectError("unavailable", message)
    return ConnectError("internal", message)
