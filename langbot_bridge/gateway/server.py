"""The gateway's one HTTP server: every webhook and WebSocket channel's routes on one port,
plus the gateway's own:

- ``GET /healthz`` — the process serves; whether the daemon and each channel are up.
- ``GET /diagnostics`` — counters, backlogs, dead letters, last errors (bearer token when
  ``[server] diagnostics_token_env`` is set). Never message content or secrets.
- ``GET /files/<token>`` — a reply file, for platforms that download files themselves
  (WorkBot's ``fileUrl``); the token is long, random and expires.
- ``POST /admin/send`` — queue a message for a known chat (only with ``admin_token_env``).

Inbound requests beyond ``max_inflight`` at once get 503 instead of piling up.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import pydantic
from aiohttp import web

from langbot_bridge.gateway.channel import Channel
from langbot_bridge.gateway.config import ServerSection, read_secret

if TYPE_CHECKING:
    from langbot_bridge.gateway.app import Gateway

log = logging.getLogger(__name__)

CORE_PATHS = ("/healthz", "/diagnostics", "/files/", "/admin/")
SHUTDOWN_TIMEOUT_SEC = 5.0
LINGER_SEC = 1.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SendRequest(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    channel: str
    target: str
    text: str = pydantic.Field(min_length=1)


def bearer_ok(request: web.Request, token: str | None) -> bool:
    if token is None:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


class GatewayServer:
    def __init__(self, gateway: Gateway, settings: ServerSection, channels: Mapping[str, Channel[Any]]) -> None:
        self.gateway = gateway
        self.settings = settings
        self.channels = channels
        # A token setting names a variable that must be set: a protected endpoint never opens by accident.
        self.diagnostics_token = read_secret(
            settings.diagnostics_token_env,
            "[server] diagnostics_token_env",
            required=bool(settings.diagnostics_token_env),
        )
        self.admin_token = read_secret(
            settings.admin_token_env, "[server] admin_token_env", required=bool(settings.admin_token_env)
        )
        self.inflight = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    def build_app(self) -> web.Application:
        limit = max([c.settings.max_body_bytes for c in self.channels.values()] + [1024 * 1024])
        app = web.Application(client_max_size=limit + 1024, middlewares=[self._admission])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/diagnostics", self._diagnostics)
        app.router.add_get("/files/{token}", self._file)
        if self.admin_token is not None:
            app.router.add_post("/admin/send", self._send)
        for channel in self.channels.values():
            app.router.add_routes(channel.routes())
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start(self) -> int:
        self._runner = web.AppRunner(
            self.build_app(),
            shutdown_timeout=SHUTDOWN_TIMEOUT_SEC,
            access_log=None,
            # After refusing an oversized body, drain the rest for at most this long (aiohttp's
            # default is 10 s, which also holds up a shutdown).
            lingering_time=LINGER_SEC,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    async def _on_shutdown(self, app: web.Application) -> None:
        for channel in self.channels.values():
            await channel.shutdown()

    @web.middleware
    async def _admission(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(CORE_PATHS):
            return await handler(request)
        if self.inflight >= self.settings.max_inflight:
            self.gateway.count("server", "rejected_overloaded")
            return web.json_response({"code": 50301, "msg": "overloaded", "data": None}, status=503)
        self.inflight += 1
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            self.inflight -= 1
            if request.method == "POST":  # a platform's delivery (not a WebSocket's whole life)
                self.gateway.counters.time("inbound_request_ms", (time.perf_counter() - started) * 1000)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "ok": True,
                "sandbox_available": self.gateway.box_available,
                "channels": {name: channel.ready for name, channel in self.channels.items()},
            }
        )

    async def _diagnostics(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self.diagnostics_token):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response(await self.gateway.diagnostics())

    async def _file(self, request: web.Request) -> web.Response:
        found = await self.gateway.store.file_by_token(request.match_info["token"])
        if found is None:
            return web.json_response({"error": "no such file (or its link expired)"}, status=404)
        meta, data = found
        return web.Response(
            body=data,
            content_type=meta.mime_type,
            headers={"Content-Disposition": f'attachment; filename="{meta.name}"'},
        )

    async def _send(self, request: web.Request) -> web.Response:
        from langbot_bridge.gateway.app import SendError

        if not bearer_ok(request, self.admin_token):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = SendRequest.model_validate_json(await request.read())
        except pydantic.ValidationError as exc:
            return web.json_response({"error": f"bad request: {exc.errors()[0]['msg']}"}, status=400)
        try:
            chat = await self.gateway.send(body.channel, body.target, body.text)
        except SendError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response({"queued": True, "chat_id": chat.chat_id, "chat_type": chat.chat_type}, status=202)
