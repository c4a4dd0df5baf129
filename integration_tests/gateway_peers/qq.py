"""QQ's side of the official bot API, written from field-2026-12 §3.3 and §3.7 (botpy
``gateway.py``, ``api.py``, ``flags.py``; the webhook notes of the official Go sample), not from
our channel:

- ``POST /app/getAppAccessToken {appId, clientSecret}`` -> ``{access_token, expires_in}`` (a
  string); calls need ``Authorization: QQBot <token>`` and ``X-Union-Appid``.
- ``GET /gateway/bot`` -> ``{url, shards, session_start_limit}``.
- Gateway: Hello (op 10, ``heartbeat_interval`` ms) -> Identify (op 2, intents must include
  PUBLIC_MESSAGES) -> READY (``s`` 1, ``session_id``) -> dispatches with increasing ``s``;
  op 1 -> op 11 (acks can be withheld). ``reconnect()`` sends op 7, expects the client to come
  back with op 6 Resume naming the session and its last ``seq``, answers RESUMED and replays
  the last message again (QQ's replayed duplicate). ``close_not_resumable()`` closes with 9001
  and expects a fresh Identify.
- Replies: ``POST /v2/groups/{group_openid}/messages`` and ``/v2/users/{openid}/messages`` with
  ``msg_id`` + ``msg_seq``; the same pair twice is refused with 40054005.
- Webhook: events signed with Ed25519 (seed: the secret repeated to 32 bytes) over
  ``timestamp + body``; op 13 validation wants ``{plain_token, signature}`` over
  ``event_ts + plain_token``; an event is acked with op 12.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from integration_tests.gateway_peers.server_base import PeerServer

PUBLIC_MESSAGES = 1 << 25


def signing_key(secret: str) -> Ed25519PrivateKey:
    seed = secret.encode()
    while len(seed) < 32:
        seed += seed
    return Ed25519PrivateKey.from_private_bytes(seed[:32])


class QQServer(PeerServer):
    def __init__(self, app_id: str, secret: str, *, heartbeat_ms: int = 300) -> None:
        super().__init__()
        self.app_id = app_id
        self.secret = secret
        self.heartbeat_ms = heartbeat_ms
        self.tokens: set[str] = set()
        self.withhold_heartbeat_acks = False
        self.sessions: dict[str, int] = {}  # session_id -> last seq sent on it
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.heartbeats: list[Any] = []
        self.connections = 0
        self.connected_at: list[float] = []  # when each link was accepted (monotonic)
        self.ws: web.WebSocketResponse | None = None
        self.session_id = ""
        self.seq = 0
        self.history: list[dict[str, Any]] = []  # dispatches of the current session, in order
        self.replies: list[dict[str, Any]] = []
        self.refused_duplicates = 0
        self._sent_pairs: set[tuple[str, int]] = set()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/app/getAppAccessToken", self._token)
        app.router.add_get("/gateway/bot", self._gateway)
        app.router.add_get("/websocket", self._connect)
        app.router.add_post("/v2/groups/{openid}/messages", self._reply)
        app.router.add_post("/v2/users/{openid}/messages", self._reply)

    async def close_sockets(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return (
            header.startswith("QQBot ")
            and header[6:] in self.tokens
            and request.headers.get("X-Union-Appid") == self.app_id
        )

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"appId": self.app_id, "clientSecret": self.secret}:
            return web.json_response({"code": 100016, "message": "invalid appid or secret"}, status=401)
        token = secrets.token_hex(12)
        self.tokens.add(token)
        return web.json_response({"access_token": token, "expires_in": "7200"})

    async def _gateway(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": 11244, "message": "token not exist"}, status=401)
        limit = {"total": 1000, "remaining": 999, "reset_after": 86400000, "max_concurrency": 1}
        return web.json_response({"url": f"{self.ws_url}/websocket", "shards": 1, "session_start_limit": limit})

    # ── the gateway ──────────────────────────────────────────────────────

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        self.connections += 1
        self.connected_at.append(time.monotonic())
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_ms}}))
        self.notify()
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await self._frame(ws, json.loads(message.data))
        if self.ws is ws:
            self.ws = None
        self.notify()
        return ws

    async def _frame(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == 2:
            assert d["token"].startswith("QQBot ") and d["token"][6:] in self.tokens, "Identify needs a valid token"
            assert d["intents"] & PUBLIC_MESSAGES, "group and C2C messages need PUBLIC_MESSAGES"
            self.identifies.append(d)
            self.session_id, self.seq, self.history = uuid.uuid4().hex, 0, []
            await self.dispatch(
                "READY", {"version": 1, "session_id": self.session_id, "user": {"id": "bot"}, "shard": [0, 1]}
            )
        elif op == 6:
            self.resumes.append(d)
            if d.get("session_id") != self.session_id:
                await ws.send_str(json.dumps({"op": 9, "d": False}))
                return
            await self.dispatch("RESUMED", "")
            # QQ replays what came after the client's seq, and (the field's complaint) the
            # last message again even when the client had it.
            replay = [h for h in self.history if h["s"] > d["seq"] and h["t"] not in ("READY", "RESUMED")]
            last = [h for h in self.history if h["t"].endswith("MESSAGE_CREATE")][-1:]
            for event in replay or last:
                await ws.send_str(json.dumps(event))
        elif op == 1:
            self.heartbeats.append(d)
            if not self.withhold_heartbeat_acks:
                await ws.send_str(json.dumps({"op": 11}))
        self.notify()

    async def dispatch(self, kind: str, d: Any) -> dict[str, Any]:
        assert self.ws is not None
        self.seq += 1
        event = {"op": 0, "s": self.seq, "t": kind, "d": d, "id": f"{kind}:{uuid.uuid4().hex[:8]}"}
        self.history.append(event)
        await self.ws.send_str(json.dumps(event, ensure_ascii=False))
        return event

    def message(
        self, msg_id: str, text: str, *, group: str | None = None, user: str = "user-openid-1"
    ) -> dict[str, Any]:
        d: dict[str, Any] = {"id": msg_id, "content": f" {text}", "timestamp": "2026-12-06T10:00:00+08:00"}
        if group:
            d |= {"group_openid": group, "author": {"member_openid": user}}
        else:
            d |= {"author": {"user_openid": user}}
        return d

    async def send_message(self, msg_id: str, text: str, **kwargs: Any) -> dict[str, Any]:
        await self.wait_until(lambda: self.ws is not None and bool(self.session_id))
        d = self.message(msg_id, text, **kwargs)
        return await self.dispatch("GROUP_AT_MESSAGE_CREATE" if "group" in kwargs else "C2C_MESSAGE_CREATE", d)

    def while_away(self, msg_id: str, text: str, **kwargs: Any) -> None:
        """A message QQ takes while the client is away: it is in the session's history and
        comes with the replay after the client's Resume."""
        self.seq += 1
        kind = "GROUP_AT_MESSAGE_CREATE" if "group" in kwargs else "C2C_MESSAGE_CREATE"
        self.history.append({"op": 0, "s": self.seq, "t": kind, "d": self.message(msg_id, text, **kwargs), "id": kind})

    async def reconnect(self) -> None:
        """op 7: the client should reconnect and Resume."""
        assert self.ws is not None
        await self.ws.send_str(json.dumps({"op": 7}))

    async def drop(self) -> None:
        """Cut the link (a network failure, a gateway node going away): resumable."""
        if self.ws is not None:
            await self.ws.close(code=1011, message=b"going away")

    async def close_not_resumable(self) -> None:
        assert self.ws is not None
        await self.ws.close(code=9001, message=b"invalid session")

    # ── replies ──────────────────────────────────────────────────────────

    async def _reply(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": 11244, "message": "token not exist"}, status=401)
        body = await request.json()
        pair = (str(body.get("msg_id")), int(body.get("msg_seq", 1)))
        if pair in self._sent_pairs:
            self.refused_duplicates += 1
            return web.json_response({"message": "消息被去重,请检查请求msgseq", "code": 40054005}, status=400)
        self._sent_pairs.add(pair)
        body["_path"] = request.path
        self.replies.append(body)
        self.notify()
        return web.json_response({"id": uuid.uuid4().hex, "timestamp": int(time.time())})

    def reply_texts(self) -> list[str]:
        return [r["content"] for r in self.replies]


class QQWebhookCaller:
    """QQ's webhook deliveries to the gateway, signed with the bot's key."""

    def __init__(self, app_id: str, secret: str) -> None:
        self.app_id = app_id
        self.key = signing_key(secret)

    def headers(self, body: bytes, timestamp: str | None = None) -> dict[str, str]:
        timestamp = timestamp or str(int(time.time()))
        return {
            "Content-Type": "application/json",
            "User-Agent": "QQBot-Callback",
            "X-Bot-Appid": self.app_id,
            "X-Signature-Method": "Ed25519",
            "X-Signature-Timestamp": timestamp,
            "X-Signature-Ed25519": self.key.sign(timestamp.encode() + body).hex(),
        }

    def check_validation(self, answer: dict[str, Any], plain_token: str, event_ts: str) -> bool:
        self.key.public_key().verify(bytes.fromhex(answer["signature"]), (event_ts + plain_token).encode())
        return bool(answer["plain_token"] == plain_token)
