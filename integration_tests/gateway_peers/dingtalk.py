"""DingTalk's side of Stream mode, written from field-2026-12 §3.1 and §3.7 (the SDK's
``stream.py``, ``frames.py``, ``chatbot.py``; the Go SDK's ``client.go``), not from our channel:

- ``POST /v1.0/gateway/connections/open`` takes ``clientId``, ``clientSecret``,
  ``subscriptions`` and answers ``{endpoint, ticket}``; a bad credential is HTTP 401.
- The WebSocket needs ``?ticket=`` of an issued ticket (each used once; otherwise HTTP 403).
- Frames are ``{specVersion, type, headers: {appId, connectionId, contentType, messageId,
  topic, time}, data}`` with ``data`` a JSON string; the client acks each with ``{code, headers:
  {messageId, contentType}, message, data}``.
- SYSTEM ``ping`` wants its data echoed; SYSTEM ``disconnect`` means the client should reconnect.
- A CALLBACK whose ack does not arrive (here: one the peer is told to lose) is delivered again
  with the same ``messageId``.
- Replies arrive at the message's ``sessionWebhook`` (recorded); ``/v1.0/oauth2/accessToken``
  and the robot OpenAPI sends are there for expired webhooks.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any

import aiohttp
import anyio
from aiohttp import web

from integration_tests.gateway_peers.server_base import PeerServer

BOT_TOPIC = "/v1.0/im/bot/messages/get"


class DingTalkServer(PeerServer):
    def __init__(self, client_id: str, client_secret: str, *, redeliver_after: float = 0.5) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.redeliver_after = redeliver_after
        self.opens: list[dict[str, Any]] = []  # bodies of connections/open
        self.tickets: set[str] = set()
        self.connections = 0
        self.connected_at: list[float] = []  # when each link was accepted (monotonic)
        self.refused_tickets = 0
        self.ws: web.WebSocketResponse | None = None
        self.acks: dict[str, list[dict[str, Any]]] = {}  # messageId -> acks received
        self.ack_latency: list[float] = []  # seconds from a callback's send to its ack
        self.lose_acks: set[str] = set()  # messageIds whose next ack is "lost" (redelivered)
        self.replies: list[dict[str, Any]] = []  # bodies posted to session webhooks
        self.openapi_sends: list[dict[str, Any]] = []
        self.expired_webhooks = False  # hand out webhooks that have already expired
        self._sent_at: dict[str, float] = {}
        self._frames: dict[str, str] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1.0/gateway/connections/open", self._open)
        app.router.add_get("/connect", self._connect)
        app.router.add_post("/robot/sendBySession/{session}", self._session_webhook)
        app.router.add_post("/v1.0/oauth2/accessToken", self._token)
        app.router.add_post("/v1.0/robot/oToMessages/batchSend", self._openapi)
        app.router.add_post("/v1.0/robot/groupMessages/send", self._openapi)

    async def close_sockets(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    # ── the connection ───────────────────────────────────────────────────

    async def _open(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clientId") != self.client_id or body.get("clientSecret") != self.client_secret:
            return web.json_response({"code": "InvalidAuthentication", "message": "bad credential"}, status=401)
        topics = {(s.get("type"), s.get("topic")) for s in body.get("subscriptions", [])}
        if ("CALLBACK", BOT_TOPIC) not in topics:
            return web.json_response({"code": "InvalidParameter", "message": "no subscription"}, status=400)
        self.opens.append(body)
        ticket = secrets.token_hex(16)
        self.tickets.add(ticket)
        return web.json_response({"endpoint": f"{self.ws_url}/connect", "ticket": ticket})

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self.tickets:
            self.refused_tickets += 1
            return web.Response(status=403, text="invalid ticket")
        self.tickets.discard(ticket)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        self.connections += 1
        self.connected_at.append(time.monotonic())
        self.notify()
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self._ack(json.loads(message.data))
        if self.ws is ws:
            self.ws = None
        self.notify()
        return ws

    def _ack(self, ack: dict[str, Any]) -> None:
        message_id = str(ack.get("headers", {}).get("messageId", ""))
        assert isinstance(ack.get("data"), str), "an ack's data is a JSON string"
        if message_id in self.lose_acks:
            self.lose_acks.discard(message_id)  # lost on the way: DingTalk delivers the frame again
            assert self.tg is not None
            self.tg.start_soon(self._redeliver, message_id)
            return
        if message_id in self._sent_at:
            self.ack_latency.append(time.perf_counter() - self._sent_at.pop(message_id))
        self.acks.setdefault(message_id, []).append(ack)
        self.notify()

    async def _redeliver(self, message_id: str) -> None:
        await anyio.sleep(self.redeliver_after)
        await self.wait_until(lambda: self.ws is not None)
        await self._send(message_id, self._frames[message_id])

    async def _send(self, message_id: str, frame: str) -> None:
        assert self.ws is not None, "no client connected"
        self._sent_at[message_id] = time.perf_counter()
        await self.ws.send_str(frame)

    def frame(self, kind: str, topic: str, data: dict[str, Any], message_id: str | None = None) -> tuple[str, str]:
        message_id = message_id or uuid.uuid4().hex
        headers = {
            "appId": "app-" + self.client_id,
            "connectionId": "conn-1",
            "contentType": "application/json",
            "messageId": message_id,
            "topic": topic,
            "time": str(int(time.time() * 1000)),
        }
        body = {"specVersion": "1.0", "type": kind, "headers": headers, "data": json.dumps(data, ensure_ascii=False)}
        return message_id, json.dumps(body, ensure_ascii=False)

    # ── what DingTalk sends ──────────────────────────────────────────────

    def chatbot_data(self, msg_id: str, text: str, *, group: str | None = None, user: str = "u-1") -> dict[str, Any]:
        session = secrets.token_hex(8)
        expires = int(time.time() * 1000) + (-1000 if self.expired_webhooks else 3_600_000)
        return {
            "msgId": msg_id,
            "msgtype": "text",
            "text": {"content": text},
            "conversationId": f"cid-{group}" if group else f"cid-single-{user}",
            "conversationType": "2" if group else "1",
            "conversationTitle": group or "",
            "senderId": f"$:LWCP_v1:${user}",
            "senderStaffId": user,
            "senderNick": user.upper(),
            "senderCorpId": "corp-1",
            "chatbotUserId": "$:bot",
            "chatbotCorpId": "corp-1",
            "robotCode": self.client_id,
            "isAdmin": False,
            "isInAtList": bool(group),
            "atUsers": [],
            "createAt": int(time.time() * 1000),
            "sessionWebhook": f"{self.url}/robot/sendBySession/{session}",
            "sessionWebhookExpiredTime": expires,
        }

    async def callback(self, data: dict[str, Any], *, lose_ack: bool = False) -> str:
        """A chatbot CALLBACK; returns its messageId (acks arrive in ``acks``)."""
        message_id, frame = self.frame("CALLBACK", BOT_TOPIC, data)
        self._frames[message_id] = frame
        if lose_ack:
            self.lose_acks.add(message_id)
        await self._send(message_id, frame)
        return message_id

    async def system(self, topic: str, data: dict[str, Any]) -> str:
        message_id, frame = self.frame("SYSTEM", topic, data)
        await self._send(message_id, frame)
        return message_id

    async def wait_ack(self, message_id: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        await self.wait_until(lambda: len(self.acks.get(message_id, [])) >= count, timeout)
        return self.acks[message_id]

    async def drop(self) -> None:
        """Cut the link from DingTalk's side."""
        if self.ws is not None:
            await self.ws.close(code=1011, message=b"server restart")

    # ── replies ──────────────────────────────────────────────────────────

    async def _session_webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["_session"] = request.match_info["session"]
        self.replies.append(body)
        self.notify()
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("appKey") != self.client_id or body.get("appSecret") != self.client_secret:
            return web.json_response({"code": "InvalidAuthentication"}, status=400)
        return web.json_response({"accessToken": "dt-token-" + secrets.token_hex(4), "expireIn": 7200})

    async def _openapi(self, request: web.Request) -> web.Response:
        if not request.headers.get("x-acs-dingtalk-access-token", "").startswith("dt-token-"):
            return web.json_response({"code": "InvalidAuthentication"}, status=401)
        body = await request.json()
        body["_path"] = request.path
        self.openapi_sends.append(body)
        self.notify()
        return web.json_response({"processQueryKey": uuid.uuid4().hex})

    def reply_texts(self) -> list[str]:
        return [r["text"]["content"] for r in self.replies]
