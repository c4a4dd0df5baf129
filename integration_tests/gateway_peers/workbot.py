"""A WorkBot server, written from seed 004 (the WorkBot third-party integration document), not
from our channel:

- It forwards a WeCom message to the third party's callback URL as JSON, signed (when a
  secret is set) with ``X-Signature`` = hex HMAC-SHA256 of ``JSON.stringify(payload)`` with
  the robot secret; the answer must come within 3 s. It does not retry a failed callback.
- ``POST /api/robot/send-message`` needs ``Authorization: Bearer <robot token>`` and
  ``robotId``, ``type``, ``titleList``, ``content``; it answers
  ``{"code":0,"message":"指令已下发","data":{"messageId","status":"pending"}}``.
- At most 60 API requests a minute ("60 QPM"); beyond that, HTTP 429.
- File messages carry a ``fileUrl``, which the app downloads.
- After executing an instruction, it posts the result (``messageId``, ``errorCode``,
  ``successList``, ``failList`` ...) to the result callback URL, signed the same way.

The window can be shortened for tests (``window``); the counting is the same.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from types import TracebackType
from typing import Any

import aiohttp
import anyio
import anyio.abc
from aiohttp import web

from integration_tests.daemon import free_port

SEND_PATH = "/api/robot/send-message"
TYPES = {"text", "image", "video", "file", "link", "mini_program"}


def stringify(payload: dict[str, Any]) -> bytes:
    """JSON.stringify: no spaces, non-ASCII kept."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class WorkBotServer:
    def __init__(
        self,
        robot_id: str,
        token: str,
        secret: str | None,
        *,
        limit: int = 60,
        window: float = 60.0,
        keep_alive: bool = False,
    ) -> None:
        self.robot_id = robot_id
        self.token = token
        self.secret = secret
        self.limit = limit
        self.window = window
        self.keep_alive = keep_alive
        self.port = free_port()
        self.callback_url = ""  # the third party's (the gateway's) callback
        self.result_url: str | None = None  # where instruction results go; None: not bound
        self.sent: list[dict[str, Any]] = []  # accepted send-message bodies, in arrival order
        self.files: dict[str, bytes] = {}  # messageId -> the bytes downloaded from fileUrl
        self.status_429 = 0
        self.fail_next: collections.deque[int] = collections.deque()  # HTTP statuses for the next requests
        self.results: collections.deque[tuple[int, list[str]]] = collections.deque()  # (errorCode, failList)
        self.max_in_window = 0
        self._accepted: collections.deque[float] = collections.deque()
        self._changed = anyio.Event()
        self._runner: web.AppRunner | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> WorkBotServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(SEND_PATH, self._send_message)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        # By default a fresh connection per request: a restarted gateway must not meet a stale
        # keep-alive socket. The benchmark keeps connections, as a busy server would.
        connector = aiohttp.TCPConnector(force_close=not self.keep_alive, limit=0)
        self._http = aiohttp.ClientSession(connector=connector)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None and self._runner is not None and self._http is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        await self._runner.cleanup()
        await self._http.close()

    # ── WorkBot -> third party ───────────────────────────────────────────

    def payload(self, **fields: Any) -> dict[str, Any]:
        """A message callback with the fields of seed 004 §2 (defaults: a text from a contact)."""
        base: dict[str, Any] = {
            "robotId": self.robot_id,
            "robotUuid": "550e8400-e29b-41d4-a716-446655440000",
            "spoken": "",
            "rawSpoken": "",
            "receivedName": "张三",
            "groupName": "",
            "groupRemark": "",
            "roomType": 4,
            "atMe": False,
            "textType": 1,
            "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        base.update(fields)
        if "rawSpoken" not in fields:
            base["rawSpoken"] = ("@机器人 " if base["atMe"] else "") + base["spoken"]
        return base

    def signed_headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.secret is not None:
            headers["X-Signature"] = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return headers

    async def deliver(self, payload: dict[str, Any]) -> tuple[int, Any, float]:
        """Forward a message as WorkBot does; returns status, JSON answer and seconds taken."""
        body = stringify(payload)
        return await self.post_raw(self.callback_url, body, self.signed_headers(body))

    async def post_raw(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, float]:
        assert self._http is not None
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=3)  # WorkBot gives up after 3 s
        async with self._http.post(url, data=body, headers=headers, timeout=timeout) as response:
            text = await response.text()
            answer = json.loads(text) if text else None
            return response.status, answer, time.monotonic() - started

    # ── third party -> WorkBot ───────────────────────────────────────────

    async def _send_message(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"code": 401, "message": "unauthorized"}, status=401)
        if self.fail_next:
            status = self.fail_next.popleft()
            if status == 429:
                self.status_429 += 1
            return web.json_response({"code": status, "message": "injected failure"}, status=status)
        while self._accepted and self._accepted[0] <= now - self.window:
            self._accepted.popleft()
        if len(self._accepted) >= self.limit:
            self.status_429 += 1
            return web.json_response({"code": 429, "message": "too many requests"}, status=429)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response({"code": 101011, "message": "数据格式错误"}, status=400)
        problem = self._invalid(body)
        if problem:
            return web.json_response({"code": 101011, "message": problem}, status=400)
        self._accepted.append(now)
        self.max_in_window = max(self.max_in_window, len(self._accepted))
        message_id = f"msg_{int(time.time() * 1000)}_{uuid.uuid4().hex[:6]}"
        body["_messageId"] = message_id
        if body.get("fileUrl"):
            assert self._http is not None
            async with self._http.get(body["fileUrl"]) as download:
                if download.status != 200:
                    return web.json_response({"code": 101011, "message": "fileUrl unreachable"}, status=400)
                self.files[message_id] = await download.read()
        self.sent.append(body)
        self._notify()
        if self.result_url is not None:
            assert self._tg is not None
            verdict = self.results.popleft() if self.results else (0, [])
            self._tg.start_soon(self._report, message_id, body, *verdict)
        return web.json_response(
            {"code": 0, "message": "指令已下发", "data": {"messageId": message_id, "status": "pending"}}
        )

    def _invalid(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "body must be an object"
        if body.get("robotId") != self.robot_id:
            return "unknown robotId"
        if body.get("type") not in TYPES:
            return "unknown type"
        titles = body.get("titleList")
        if not isinstance(titles, list) or not titles or not all(isinstance(t, str) and t for t in titles):
            return "titleList must be a non-empty list of names"
        if not isinstance(body.get("content"), str):
            return "content is required"
        if body["type"] != "text" and not body.get("fileUrl"):
            return "fileUrl is required for files"
        return None

    async def _report(self, message_id: str, body: dict[str, Any], code: int, failed: list[str]) -> None:
        assert self.result_url is not None and self._http is not None
        titles = list(body["titleList"])
        result = {
            "robotId": self.robot_id,
            "messageId": message_id,
            "errorCode": code,
            "errorReason": "" if code == 0 else "发送消息失败",
            "runTime": int(time.time() * 1000),
            "timeCost": 0.1,
            "type": 203 if body["type"] == "text" else 218,
            "rawMsg": json.dumps({"type": 203, "titleList": titles}, ensure_ascii=False),
            "successList": [] if code else [t for t in titles if t not in failed],
            "failList": titles if code else failed,
        }
        raw = stringify(result)
        async with self._http.post(self.result_url, data=raw, headers=self.signed_headers(raw)) as response:
            await response.read()

    # ── waiting ──────────────────────────────────────────────────────────

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_sent(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        with anyio.fail_after(timeout):
            while len(self.sent) < count:
                await self._changed.wait()
        return self.sent

    def texts_to(self, title: str) -> list[str]:
        return [m["content"] for m in self.sent if m["type"] == "text" and m["titleList"] == [title]]
