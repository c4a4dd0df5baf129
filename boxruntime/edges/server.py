"""The daemon's HTTP side: ``/rpc/ws`` (action RPC), ``/healthz``, ``/readyz``, ``/metrics``; and
both ways of serving (WebSocket, stdio) until told to stop.

Every WebSocket route checks the token *before* the upgrade when one is configured, and a
daemon never listens on a non-loopback address without one. ``/metrics`` (Prometheus) takes
the same token as ``/rpc/ws`` (``Authorization: Bearer``), since it tells who runs what; the
health probes stay open. Every 401, whichever route refused, is counted.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable

import anyio
from aiohttp import web

from boxruntime.config import HOST_BACKEND_REFUSAL, Settings, host_backend_refusal
from boxruntime.edges.e2b import add_e2b_routes
from boxruntime.edges.handlers import BoxActions
from boxruntime.edges.relay import RELAY_PATHS, relay_ws
from boxruntime.event_loop import running_loop_name
from boxruntime.metrics import CONTENT_TYPE
from boxruntime.models import RelayInfo
from boxruntime.protocol import MAX_MESSAGE_BYTES, ActionHandler, Peer, StreamConnection, WebSocketConnection
from boxruntime.runtime.core import BoxRuntime
from boxruntime.skills.actions import SkillActions
from boxruntime.tenancy.gate import TenantGate
from boxruntime.tenancy.service import Tenancy
from boxruntime.tenancy.trust import Untrusted, admit_header

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-LangBot-Box-Control-Token"
RUNTIME_KEY = web.AppKey("runtime", BoxRuntime)
SKILLS_KEY = web.AppKey("skills", SkillActions)
TENANCY_KEY = web.AppKey("tenancy", Tenancy)
TOKEN_KEY = web.AppKey("token", str)  # "" when no token is required
SKILL_CLEANUP_INTERVAL_SEC = 60.0
SOCKETS_KEY = web.AppKey("sockets", set[web.WebSocketResponse])


class StartupRefused(Exception):
    """The daemon will not start with this configuration; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_policy(settings: Settings) -> None:
    if not is_loopback(settings.host) and settings.token is None:
        raise StartupRefused(
            f"refusing to listen on {settings.host} without a token: anyone who can reach the port "
            "could run code. Set BOXRUNTIME_TOKEN (at least 32 characters) or bind 127.0.0.1."
        )
    if host_backend_refusal(settings.backend, settings.token, websocket=True):
        raise StartupRefused(
            "refusing to serve the host backend over WebSocket without a token: it runs commands "
            "directly on this machine with no isolation, and any local process could connect. Set "
            "BOXRUNTIME_TOKEN (at least 32 characters), or use --stdio. (" + HOST_BACKEND_REFUSAL + ")"
        )


def presented_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get(TOKEN_HEADER)


def authorized(request: web.Request, token: str | None) -> bool:
    if token is None:
        return True
    offered = presented_token(request)
    # compare_digest on bytes of possibly different lengths still takes constant time per byte.
    return offered is not None and hmac.compare_digest(offered.encode(), token.encode())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def require_auth(handler: Handler) -> Handler:
    async def checked(request: web.Request) -> web.StreamResponse:
        if not authorized(request, request.app[TOKEN_KEY] or None):
            log.warning("refused %s from %s: bad or missing token", request.path, request.remote)
            raise web.HTTPUnauthorized(text="Unauthorized")
        return await handler(request)

    return checked


@web.middleware
async def count_auth_failures(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every 401 of any route (token, LangBot instance, E2B API key or access token), by the
    route's template: the path itself is the caller's and would make a series per request."""
    try:
        response = await handler(request)
    except web.HTTPUnauthorized:
        request.app[RUNTIME_KEY].metrics.auth_failed(route_of(request))
        raise
    if response.status == 401:
        request.app[RUNTIME_KEY].metrics.auth_failed(route_of(request))
    return response


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(unmatched)"


async def metrics(request: web.Request) -> web.Response:
    """Prometheus's text format, from this daemon's own registry (``boxruntime.metrics``)."""
    body = request.app[RUNTIME_KEY].metrics.scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def control_actions(tenancy: Tenancy, skills: SkillActions, relay: RelayInfo | None = None) -> dict[str, ActionHandler]:
    """One control connection's actions: the runtime's, the skill store's and the tenancy's, each
    bound to its catalogue entry."""
    return tenancy.actions(BoxActions(tenancy.runtime, skills, relay).table()).wire()


async def rpc_ws(request: web.Request) -> web.StreamResponse:
    tenancy = request.app[TENANCY_KEY]
    try:
        instance = admit_header(request.headers, tenancy.trust, required=tenancy.required, pin=True)
    except Untrusted as exc:
        log.warning("refused %s from %s: %s", request.path, request.remote, exc)
        raise web.HTTPUnauthorized(text="Unauthorized") from None
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, compress=False)
    await ws.prepare(request)
    request.app[SOCKETS_KEY].add(ws)
    actions = control_actions(tenancy, request.app[SKILLS_KEY])  # relay on this same endpoint
    gate = TenantGate(tenancy, identified=instance is not None, host_backend_allowed=bool(request.app[TOKEN_KEY]))
    peer = Peer(
        WebSocketConnection(ws),
        actions,
        name=f"ws:{request.remote}",
        gate=gate,
        on_failure=tenancy.runtime.metrics.rpc_failed,
    )
    log.info("control connection from %s", request.remote)
    try:
        await peer.run()
    finally:
        request.app[SOCKETS_KEY].discard(ws)
        if not ws.closed:
            await ws.close()
        log.info("control connection from %s closed", request.remote)
    return ws


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return web.json_response({"live": True, "sessions": len(runtime.sessions)})


async def readyz(request: web.Request) -> web.Response:
    """LangBot 0.7's readiness object: standard mode, or every admission-mode check."""
    readiness = await request.app[TENANCY_KEY].managed.readiness.get()
    return web.json_response(readiness.model_dump(mode="json"), status=200 if readiness.ready else 503)


def skill_actions(settings: Settings) -> SkillActions:
    """One per daemon: uploads must outlive a connection (LangBot may reconnect mid-upload)."""
    return SkillActions(lambda: settings.skills_dir, settings.data_dir / "uploads")


async def run_daemon_tasks(tenancy: Tenancy, skills: SkillActions) -> None:
    """Everything a daemon does in the background; runs until its owner cancels it."""

    async def clean_skill_uploads() -> None:
        while True:
            await anyio.sleep(SKILL_CLEANUP_INTERVAL_SEC)
            skills.cleanup()

    async with anyio.create_task_group() as tg:
        tg.start_soon(tenancy.runtime.run_background)
        tg.start_soon(tenancy.run)
        tg.start_soon(clean_skill_uploads)


async def relay(request: web.Request) -> web.StreamResponse:
    sockets: set[web.WebSocketResponse] = request.app[SOCKETS_KEY]
    return await relay_ws(request, request.app[TENANCY_KEY], sockets)


def create_app(tenancy: Tenancy, skills: SkillActions, token: str | None, control: bool = True) -> web.Application:
    """The HTTP side. ``control=False`` (stdio mode) serves only the relay and health routes."""
    app = web.Application(middlewares=[count_auth_failures])
    app[RUNTIME_KEY] = tenancy.runtime
    app[TENANCY_KEY] = tenancy
    app[SKILLS_KEY] = skills
    app[TOKEN_KEY] = token or ""
    app[SOCKETS_KEY] = set()
    if control:
        app.router.add_get("/rpc/ws", require_auth(rpc_ws))
        add_e2b_routes(app, tenancy.runtime, token)  # E2B's API on the same port (boxruntime/e2b)
    for path in RELAY_PATHS:
        app.router.add_get(path, require_auth(relay))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", require_auth(metrics))
    return app


# What a daemon does with its sandboxes when it stops (README: crash recovery and upgrades):
# - stdio: its client is gone (EOF) or it was told to stop: nobody will come back through this
#   pipe, so it removes them, always;
# - WebSocket: SIGTERM/SIGINT remove them (a service being stopped leaves nothing behind) unless
#   ``keep_sandboxes`` is set; SIGUSR2 is the handover of an upgrade: it keeps them for the next
#   daemon on the data dir either way. A crash keeps them too, and the next daemon takes over.
HANDOVER_SIGNAL = signal.SIGUSR2


async def _until_signalled(*extra: signal.Signals) -> int:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, *extra) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            return int(signum)
    raise AssertionError("signal receiver ended")  # pragma: no cover - it never ends


async def serve_websocket(settings: Settings) -> None:
    check_bind_policy(settings)
    keep = False
    runtime = BoxRuntime(settings)
    await runtime.start()
    skills = skill_actions(settings)
    tenancy = Tenancy(runtime)
    app = create_app(tenancy, skills, settings.token)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info(
            "boxruntime listening on ws://%s:%d/rpc/ws (backend=%s, auth=%s, loop=%s)",
            settings.host,
            settings.port,
            settings.backend,
            "token" if settings.token else "none (loopback only)",
            running_loop_name(),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_daemon_tasks, tenancy, skills)
            signum = await _until_signalled(HANDOVER_SIGNAL)
            keep = signum == HANDOVER_SIGNAL or settings.keep_sandboxes
            tg.cancel_scope.cancel()
        sockets: set[web.WebSocketResponse] = app[SOCKETS_KEY]
        for ws in list(sockets):
            await ws.close(code=1001, message=b"Box runtime shutting down")
    finally:
        await runner.cleanup()
        if await runtime.close(keep=keep):
            log.info("sandboxes left running for the next daemon on %s", settings.data_dir)
        tenancy.close()


async def _stdio_connection() -> StreamConnection:
    """Protocol frames on the original stdout; everything else that writes to fd 1 (a stray
    print, a child process) lands on stderr instead of corrupting the stream."""
    loop = asyncio.get_running_loop()
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, proto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, protocol_out)
    writer = asyncio.StreamWriter(transport, proto, None, loop)
    return StreamConnection(reader, writer)


async def serve_stdio(settings: Settings, relay_port: int = 0) -> None:
    """Action RPC on stdin/stdout. The relay for managed processes needs a socket: it listens on
    loopback (``relay_port``, or a free port) behind the configured token or one made up now,
    and ``box_relay_info`` tells the client where."""
    runtime = BoxRuntime(settings)
    await runtime.start()
    skills = skill_actions(settings)
    token = settings.token or secrets.token_urlsafe(32)
    tenancy = Tenancy(runtime)
    runner = web.AppRunner(create_app(tenancy, skills, token, control=False), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", relay_port)
        await site.start()
        port = runner.addresses[0][1]
        relay_info = RelayInfo(base_url=f"http://127.0.0.1:{port}", token=token)
        connection = await _stdio_connection()
        # Under LangBot 4.x the instance comes pinned in LANGBOT_BOX_TRUSTED_INSTANCE_UUID: the
        # client on stdin is that instance, a 0.7 client.
        gate = TenantGate(tenancy, identified=settings.trusted_instance is not None, host_backend_allowed=True)
        peer = Peer(
            connection,
            control_actions(tenancy, skills, relay_info),
            name="stdio",
            gate=gate,
            on_failure=runtime.metrics.rpc_failed,
        )
        log.info(
            "boxruntime serving action RPC on stdio (backend=%s, relay on port %d, loop=%s)",
            settings.backend,
            port,
            running_loop_name(),
        )

        async def until_eof_then_stop(tg: anyio.abc.TaskGroup) -> None:
            await peer.run()
            log.info("stdin closed, shutting down")
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_daemon_tasks, tenancy, skills)
            tg.start_soon(until_eof_then_stop, tg)
            await _until_signalled()
            tg.cancel_scope.cancel()
    finally:
        await runner.cleanup()
        await runtime.close()
        tenancy.close()
