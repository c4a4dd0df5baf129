"""WeCom's side of the AI bot long connection, written from field-2026-12 §3.2 and §3.7
(aibot-node-sdk ``src/ws.ts``, ``src/types/message.ts``), not from our channel:

- JSON text frames ``{cmd, headers: {req_id}, body}``; acks ``{headers: {req_id}, errcode,
  errmsg}`` without ``cmd``.
- ``aibot_subscribe {bot_id, secret}``: errcode 0, or 853000 "invalid bot_id or secret".
- ``ping`` is acked (unless the peer withholds its acks, to see the client give up the socket).
- Callbacks: ``aibot_msg_callback`` (body ``msgid``, ``chattype``, ``from.userid``, ``msgtype``
  ...) and ``aibot_event_callback`` (``event.eventtype``: ``enter_chat``, ``disconnected_event``).
- Replies on a callback's ``req_id`` are serial: a frame sent before the previous one on that
  ``req_id`` was acked is a protocol violation (counted here). Acks can be delayed.
- ``aibot_send_msg`` for a chat without a usable ``req_id``; ``aibot_upload_media_init`` ->
  ``upload_id``, ``_chunk``, ``_finish`` -> ``media_id``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import aiohttp
import anyio
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from integration_tests.gateway_peers.server_base import PeerServer

BAD_CREDENTIAL = 853000


class WeComAiBotServer(PeerServer):
    def __init__(self, bot_id: str, secret: str) -> None:
        super().__init__()
        self.bot_id = bot_id
        self.secret = secret
        self.refuse_subscribes = 0  # this many subscribes are answered 853000 first
        self.withhold_ping_acks = False
        self.ack_delay = 0.0  # seconds before a reply frame is acked
        self.connections = 0
        self.connected_at: list[float] = []  # when each link was accepted (monotonic)
        self.subscribes: list[dict[str, Any]] = []
        self.refused = 0
        self.pings = 0
        self.frames: list[dict[str, Any]] = []  # replies (respond/welcome/send), in order of arrival
        self.violations = 0  # a reply frame on a req_id whose previous frame was not acked yet
        self.uploads: dict[str, bytearray] = {}
        self.media: dict[str, bytes] = {}
        self.ws: web.WebSocketResponse | None = None
        self.downloads: dict[str, bytes] = {}  # encrypted inbound media by name
        self._unacked: set[str] = set()

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._connect)
        app.router.add_get("/media/{name}", self._download)

    async def _download(self, request: web.Request) -> web.Response:
        data = self.downloads.get(request.match_info["name"])
        return web.Response(body=data) if data is not None else web.Response(status=404)

    async def image(self, msgid: str, plain: bytes, *, user: str = "zhangsan") -> str:
        """An image message: the bytes encrypted with a fresh key, served for download."""
        key = secrets.token_bytes(32)
        pad = 32 - len(plain) % 32
        encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
        self.downloads[msgid] = encryptor.update(plain + bytes([pad]) * pad) + encryptor.finalize()
        req_id = "req_" + secrets.token_hex(8)
        body = {
            "msgid": msgid,
            "aibotid": self.bot_id,
            "chattype": "single",
            "from": {"userid": user},
            "msgtype": "image",
            "image": {"url": f"{self.url}/media/{msgid}", "aeskey": base64.b64encode(key).decode()},
        }
        await self.push({"cmd": "aibot_msg_callback", "headers": {"req_id": req_id}, "body": body})
        return req_id

    async def close_sockets(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.ws = ws
        self.connections += 1
        self.connected_at.append(time.monotonic())
        self.notify()
        async with anyio.create_task_group() as tg:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await self._frame(ws, json.loads(message.data), tg)
            tg.cancel_scope.cancel()
        if self.ws is ws:
            self.ws = None
        self.notify()
        return ws

    async def _ack(self, ws: web.WebSocketResponse, req_id: str, errcode: int = 0, **body: Any) -> None:
        ack: dict[str, Any] = {
            "headers": {"req_id": req_id},
            "errcode": errcode,
            "errmsg": "ok" if not errcode else "err",
        }
        if body:
            ack["body"] = body
        if not ws.closed:
            await ws.send_str(json.dumps(ack))

    async def _frame(self, ws: web.WebSocketResponse, frame: dict[str, Any], tg: Any) -> None:
        cmd, req_id, body = frame.get("cmd"), frame.get("headers", {}).get("req_id", ""), frame.get("body", {})
        if cmd == "aibot_subscribe":
            assert req_id.startswith("aibot_subscribe_")
            self.subscribes.append(body)
            if self.refuse_subscribes > 0 or body != {"bot_id": self.bot_id, "secret": self.secret}:
                self.refuse_subscribes = max(0, self.refuse_subscribes - 1)
                self.refused += 1
                await ws.send_str(
                    json.dumps(
                        {"headers": {"req_id": req_id}, "errcode": BAD_CREDENTIAL, "errmsg": "invalid bot_id or secret"}
                    )
                )
                await ws.close()
            else:
                await self._ack(ws, req_id)
            self.notify()
        elif cmd == "ping":
            self.pings += 1
            if not self.withhold_ping_acks:
                await self._ack(ws, req_id)
            self.notify()
        elif cmd in ("aibot_respond_msg", "aibot_respond_welcome_msg", "aibot_send_msg"):
            if req_id in self._unacked:
                self.violations += 1
            self._unacked.add(req_id)
            self.frames.append({"cmd": cmd, "req_id": req_id, "body": body, "at": time.monotonic()})
            self.notify()
            tg.start_soon(self._ack_later, ws, req_id)
        elif cmd == "aibot_upload_media_init":
            upload_id = "up-" + secrets.token_hex(4)
            self.uploads[upload_id] = bytearray()
            await self._ack(ws, req_id, upload_id=upload_id)
        elif cmd == "aibot_upload_media_chunk":
            self.uploads[body["upload_id"]] += base64.b64decode(body["base64_data"])
            await self._ack(ws, req_id)
        elif cmd == "aibot_upload_media_finish":
            media_id = "media-" + secrets.token_hex(4)
            self.media[media_id] = bytes(self.uploads.pop(body["upload_id"]))
            await self._ack(ws, req_id, media_id=media_id, type="file", created_at=int(time.time()))

    async def _ack_later(self, ws: web.WebSocketResponse, req_id: str) -> None:
        await anyio.sleep(self.ack_delay)
        self._unacked.discard(req_id)
        await self._ack(ws, req_id)

    # ── what WeCom sends ─────────────────────────────────────────────────

    async def message(self, msgid: str, text: str, *, user: str = "zhangsan", group: str | None = None) -> str:
        """An ``aibot_msg_callback``; returns its req_id."""
        req_id = "req_" + secrets.token_hex(8)
        body: dict[str, Any] = {
            "msgid": msgid,
            "aibotid": self.bot_id,
            "chattype": "group" if group else "single",
            "from": {"userid": user},
            "create_time": int(time.time()),
            "response_url": "https://example.invalid/response",
            "msgtype": "text",
            "text": {"content": text},
        }
        if group:
            body["chatid"] = group
        await self.push({"cmd": "aibot_msg_callback", "headers": {"req_id": req_id}, "body": body})
        return req_id

    async def event(self, eventtype: str, *, user: str = "zhangsan") -> str:
        req_id = "req_" + secrets.token_hex(8)
        body = {
            "msgid": secrets.token_hex(6),
            "aibotid": self.bot_id,
            "from": {"userid": user},
            "event": {"eventtype": eventtype},
        }
        await self.push({"cmd": "aibot_event_callback", "headers": {"req_id": req_id}, "body": body})
        return req_id

    async def push(self, frame: dict[str, Any]) -> None:
        await self.wait_until(lambda: self.ws is not None)
        assert self.ws is not None
        await self.ws.send_str(json.dumps(frame, ensure_ascii=False))

    async def drop(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    def replies_to(self, req_id: str) -> list[dict[str, Any]]:
        return [f["body"] for f in self.frames if f["req_id"] == req_id]

    def final_texts(self) -> list[str]:
        return [
            f["body"]["stream"]["content"]
            for f in self.frames
            if f["cmd"] == "aibot_respond_msg"
            and f["body"].get("msgtype") == "stream"
            and f["body"]["stream"]["finish"]
        ]
