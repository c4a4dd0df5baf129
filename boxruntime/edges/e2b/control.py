"""E2B's control plane: create, connect, list, get, kill, timeout, metrics (and pause, which
the backends cannot do yet, refused with a clear message).

The API key (``X-API-KEY``, or ``Authorization: Bearer``) must be the daemon's token when one
is configured, compared in constant time; without a token (loopback only) any key is taken.
Errors are E2B's ``{"code": <status>, "message": ...}``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import pydantic
from aiohttp import web

from boxruntime.edges.e2b.api_models import (
    ApiError,
    ConnectSandbox,
    NewSandbox,
    Payload,
    RefreshRequest,
    SandboxMetric,
    TimeoutRequest,
)
from boxruntime.edges.e2b.sandboxes import DEFAULT_TIMEOUT_SEC, E2BSandbox, Sandboxes, SandboxNotFound
from boxruntime.errors import (
    BoxCapacityExceededError,
    BoxError,
    BoxImageNotFoundError,
    BoxSessionNotFoundError,
    BoxValidationError,
)

log = logging.getLogger(__name__)

P = TypeVar("P", bound=pydantic.BaseModel)
NO_PAUSE = (
    "pausing is not supported by boxruntime: its backends cannot freeze a sandbox and resume it yet; "
    "keep the sandbox running (set_timeout) or kill it"
)
MAX_PAGE = 1000


def api_error(status: int, message: str) -> web.Response:
    return web.json_response(ApiError(code=status, message=message).wire(), status=status)


class ApiFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def payload(model: type[P], raw: bytes) -> P:
    try:
        data = json.loads(raw) if raw.strip() else {}
        return model.model_validate(data)
    except (ValueError, pydantic.ValidationError) as exc:
        raise ApiFailure(400, f"invalid request body: {exc}") from None


class ControlPlane:
    def __init__(self, sandboxes: Sandboxes, token: str | None) -> None:
        self._sandboxes = sandboxes
        self._token = token

    def routes(self) -> list[web.RouteDef]:
        h = self._handle
        return [
            web.post("/sandboxes", h(self.create)),
            web.post("/v2/sandboxes", h(self.create)),
            web.get("/sandboxes", h(self.list_v1)),
            web.get("/v2/sandboxes", h(self.list_v2)),
            web.get("/sandboxes/{sandbox_id}", h(self.get)),
            web.delete("/sandboxes/{sandbox_id}", h(self.kill)),
            web.post("/sandboxes/{sandbox_id}/connect", h(self.connect)),
            web.post("/v2/sandboxes/{sandbox_id}/connect", h(self.connect)),
            web.post("/sandboxes/{sandbox_id}/timeout", h(self.set_timeout)),
            web.post("/sandboxes/{sandbox_id}/refreshes", h(self.refresh)),
            web.post("/sandboxes/{sandbox_id}/pause", h(self.pause)),
            web.post("/sandboxes/{sandbox_id}/resume", h(self.pause)),
            web.get("/sandboxes/{sandbox_id}/metrics", h(self.metrics)),
        ]

    def _handle(self, handler: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            if not self._key_ok(request):
                log.warning("e2b: refused %s %s from %s: bad or missing API key", request.method, request.path,
                            request.remote)  # fmt: skip
                return api_error(401, "Invalid API key")
            try:
                response: web.StreamResponse = await handler(request)
                return response
            except ApiFailure as exc:
                return api_error(exc.status, str(exc))
            except SandboxNotFound as exc:
                return api_error(404, f"sandbox {exc.sandbox_id} not found")
            except BoxSessionNotFoundError as exc:
                return api_error(404, str(exc))
            except BoxCapacityExceededError as exc:
                return api_error(429, str(exc))
            except BoxImageNotFoundError as exc:
                return api_error(404, f"template not found: {exc}")
            except BoxValidationError as exc:
                return api_error(400, str(exc))
            except BoxError as exc:
                return api_error(500, f"{type(exc).__name__}: {exc}")

        return handle

    def _key_ok(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        offered = request.headers.get("X-API-KEY")
        auth = request.headers.get("Authorization", "")
        if offered is None and auth[:7].lower() == "bearer ":
            offered = auth[7:].strip()
        return offered is not None and hmac.compare_digest(offered.encode(), self._token.encode())

    def _sandbox(self, request: web.Request) -> E2BSandbox:
        return self._sandboxes.get(request.match_info["sandbox_id"])

    @staticmethod
    def _json(model: Payload | list[Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        body = [m.wire() for m in model] if isinstance(model, list) else model.wire()
        return web.json_response(body, status=status, headers=headers)

    # ── lifecycle ────────────────────────────────────────────────────────

    async def create(self, request: web.Request) -> web.Response:
        body = payload(NewSandbox, await request.read())
        sandbox = await self._sandboxes.create(body)
        return self._json(self._sandboxes.created(sandbox), status=201)

    async def connect(self, request: web.Request) -> web.Response:
        body = payload(ConnectSandbox, await request.read())
        sandbox = self._sandbox(request)
        self._sandboxes.extend(sandbox, DEFAULT_TIMEOUT_SEC if body.timeout is None else body.timeout)
        return self._json(self._sandboxes.created(sandbox))

    async def kill(self, request: web.Request) -> web.Response:
        await self._sandboxes.kill(request.match_info["sandbox_id"])
        return web.Response(status=204)

    async def set_timeout(self, request: web.Request) -> web.Response:
        body = payload(TimeoutRequest, await request.read())
        self._sandboxes.set_timeout(self._sandbox(request), body.timeout)
        return web.Response(status=204)

    async def refresh(self, request: web.Request) -> web.Response:
        body = payload(RefreshRequest, await request.read())
        self._sandboxes.extend(self._sandbox(request), body.duration or DEFAULT_TIMEOUT_SEC)
        return web.Response(status=204)

    async def pause(self, request: web.Request) -> web.Response:
        self._sandbox(request)  # 404 for an unknown one, as E2B answers first
        raise ApiFailure(501, NO_PAUSE)

    # ── queries ──────────────────────────────────────────────────────────

    async def get(self, request: web.Request) -> web.Response:
        return self._json(self._sandboxes.detail(self._sandbox(request)))

    async def list_v1(self, request: web.Request) -> web.Response:
        return self._json([self._sandboxes.detail(s) for s in self._matching(request)])

    async def list_v2(self, request: web.Request) -> web.Response:
        """``GET /v2/sandboxes``: filters, order and pages (``nextToken`` in, ``x-next-token`` out)."""
        states = {s for s in request.query.get("state", "").split(",") if s}
        found = [] if states and "running" not in states else self._matching(request)
        found.sort(key=lambda s: s.started_at, reverse=request.query.get("order", "desc") != "asc")
        start = int(request.query["nextToken"]) if request.query.get("nextToken", "").isdigit() else 0
        limit = request.query.get("limit", "100")
        size = min(int(limit), MAX_PAGE) if limit.isdigit() and int(limit) > 0 else 100
        page = found[start : start + size]
        headers = {"x-next-token": str(start + size)} if start + size < len(found) else None
        return self._json([self._sandboxes.detail(s) for s in page], headers=headers)

    def _matching(self, request: web.Request) -> list[E2BSandbox]:
        wanted = dict(parse_qsl(request.query.get("metadata", ""), keep_blank_values=True))
        template = request.query.get("template")
        started_after = None
        if raw := request.query.get("startedAfter"):
            try:
                started_after = dt.datetime.fromisoformat(raw)
            except ValueError:
                raise ApiFailure(400, f"startedAfter is not an ISO 8601 time: {raw!r}") from None
            if started_after.tzinfo is None:
                started_after = started_after.replace(tzinfo=dt.UTC)
        found = []
        for sandbox in self._sandboxes.all():
            if any(sandbox.metadata.get(k) != v for k, v in wanted.items()):
                continue
            if template and template != sandbox.template_id:
                continue
            if started_after is not None and sandbox.started_at < started_after:
                continue
            found.append(sandbox)
        return found

    async def metrics(self, request: web.Request) -> web.Response:
        """One sample, now, if now is within ``start``..``end`` (unix seconds) when given."""
        sandbox = self._sandbox(request)
        bounds = [request.query.get(k, "") for k in ("start", "end")]
        if any(b and not b.lstrip("-").isdigit() for b in bounds):
            raise ApiFailure(400, "start and end are unix timestamps in seconds")
        samples: list[SandboxMetric] = await self._sandboxes.metrics(sandbox)
        start, end = (int(b) if b else None for b in bounds)
        kept = [
            m
            for m in samples
            if (start is None or m.timestamp_unix >= start) and (end is None or m.timestamp_unix <= end)
        ]
        return self._json(list(kept))
