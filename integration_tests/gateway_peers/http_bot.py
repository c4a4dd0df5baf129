"""The other side of LangBot 4.11's HTTP bot adapter (field-2026-12 §3.5), written from the
protocol facts, not from our channel: a system that posts its users' messages to
``POST /bots/<bot_uuid>`` and takes the replies at its callback URL.

- Requests are signed: ``X-LB-Timestamp`` (seconds) and ``X-LB-Signature`` =
  ``"sha256=" + hex(HMAC_SHA256(secret, "<ts>." + raw_body))``; ``X-LB-Idempotency-Key`` is
  optional. The body is ``{session_id, message: <MessageChain>, session_type, sender}``.
- Callbacks arrive signed the same way with ``{session_id, reply_to, sequence, is_final,
  stream, message[], timestamp}``; an invalid signature is answered 401 and not recorded.
- ``fail_next`` answers the next callbacks with given statuses (5xx to see retries, 4xx to see
  none).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import time
from types import TracebackType
from typing import Any

import aiohttp
import anyio
from aiohttp import web

from integration_tests.daemon import free_port


def signature(secret: str, body: bytes, ts: int) -> str:
    return "sha256=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


class HttpBotCaller:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.port = free_port()
        self.callbacks: list[dict[str, Any]] = []
        self.callback_headers: list[dict[str, str]] = []
        self.bad_callbacks = 0
        self.fail_next: collections.deque[int] = collections.deque()
        self.bot_url = ""  # the gateway's /bots/<id>
        self._changed = anyio.Event()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def callback_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/callback"

    async def __aenter__(self) -> HttpBotCaller:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/callback", self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._runner is not None and self._http is not None
        await self._http.close()
        await self._runner.cleanup()

    # ── in ───────────────────────────────────────────────────────────────

    async def post(
        self,
        session_id: str,
        parts: list[dict[str, Any]],
        *,
        idempotency_key: str | None = None,
        session_type: str | None = None,
        sender: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"session_id": session_id, "message": parts}
        if session_type:
            body["session_type"] = session_type
        if sender:
            body["sender"] = sender
        raw = json.dumps(body).encode()
        return await self.post_raw(raw, self.signed(raw, idempotency_key))

    def signed(self, raw: bytes, idempotency_key: str | None = None, ts: int | None = None) -> dict[str, str]:
        ts = int(time.time()) if ts is None else ts
        headers = {
            "Content-Type": "application/json",
            "X-LB-Timestamp": str(ts),
            "X-LB-Signature": signature(self.secret, raw, ts),
        }
        if idempotency_key:
            headers["X-LB-Idempotency-Key"] = idempotency_key
        return headers

    async def post_raw(self, raw: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        assert self._http is not None
        async with self._http.post(self.bot_url, data=raw, headers=headers) as response:
            return response.status, await response.json()

    async def say(self, session_id: str, text: str, **kwargs: Any) -> dict[str, Any]:
        status, answer = await self.post(session_id, [{"type": "Plain", "text": text}], **kwargs)
        assert status == 202, answer
        assert answer["code"] == 0 and answer["msg"] == "accepted"
        data: dict[str, Any] = answer["data"]
        return data

    # ── out ──────────────────────────────────────────────────────────────

    async def _callback(self, request: web.Request) -> web.Response:
        raw = await request.read()
        ts = request.headers.get("X-LB-Timestamp", "")
        given = request.headers.get("X-LB-Signature", "")
        if (
            not ts.isdigit()
            or abs(time.time() - int(ts)) > 300
            or not hmac.compare_digest(given, signature(self.secret, raw, int(ts)))
        ):
            self.bad_callbacks += 1
            return web.json_response({"error": "bad signature"}, status=401)
        if self.fail_next:
            return web.json_response({"error": "injected"}, status=self.fail_next.popleft())
        self.callbacks.append(json.loads(raw))
        self.callback_headers.append(dict(request.headers))
        self._changed.set()
        self._changed = anyio.Event()
        return web.json_response({"ok": True})

    async def wait_callbacks(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        with anyio.fail_after(timeout):
            while len(self.callbacks) < count:
                await self._changed.wait()
        return self.callbacks

    def finals(self, session_id: str) -> list[dict[str, Any]]:
        return [c for c in self.callbacks if c["session_id"] == session_id and not c["stream"]]

    def texts(self, session_id: str) -> list[str]:
        return [part["text"] for c in self.finals(session_id) for part in c["message"] if part["type"] == "Plain"]
