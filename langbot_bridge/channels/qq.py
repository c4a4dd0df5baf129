"""QQ Bot, official API (seed 000; field-2026-12 §3.3): group @-messages and C2C messages, by
the gateway WebSocket (``mode = "gateway"``, no public address needed) or by webhook
(``mode = "webhook"``, Ed25519-signed callbacks).

Our own client, faithful to botpy (``qq-botpy`` 1.2, the official SDK): botpy builds its
own event loop and session, hard-codes the API hosts (no local peer can stand in), runs its
heartbeats and handlers as unowned tasks, starts another heartbeat loop on every RESUMED, and
answers again every message a Resume replays.

Gateway: token -> ``GET /gateway/bot`` -> Hello -> Identify (``intents``, default
PUBLIC_MESSAGES) or, with a session, Resume with the last sequence number handled; heartbeats
every Hello ``heartbeat_interval`` (``d`` = last seq), and a link whose heartbeats go
unanswered ``max_missed_heartbeats`` times is dropped and resumed. op 7 -> reconnect and Resume;
op 9 and close codes 9001/9005 -> forget the session, Identify again; 4004 -> a new token.
The session id and the last sequence number are kept in the gateway's store after each stored
message, so a restarted gateway resumes too; the messages QQ replays after a Resume are
recognised by their id and answered once.

Webhook: ``POST <path>`` (default ``/qq/<name>``), signature checked over ``timestamp + body``;
op 13 (URL validation) is answered with the signed ``plain_token``; a message is stored
before the op 12 ack.

Out: ``/v2/groups/{group_openid}/messages`` or ``/v2/users/{openid}/messages`` with the message's
``msg_id`` and ``msg_seq`` = the part's position in the reply (stable across retries).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import anyio
import anyio.abc
import pydantic
from aiohttp import web

from langbot_bridge.channels import qq_wire as wire
from langbot_bridge.channels.longconn import LinkDropped, LinkSettings, LinkState, Reconnect, run_links
from langbot_bridge.channels.qq_api import QQApi
from langbot_bridge.channels.webhook import read_body, refusal
from langbot_bridge.gateway.channel import Capabilities, Channel, ChannelHost, ChannelKind, Delivery, Rejected
from langbot_bridge.gateway.config import read_secret
from langbot_bridge.gateway.messages import ChatRef, Inbound, SendResult

log = logging.getLogger(__name__)

SESSION_KEY = "gateway_session"
DEFAULT_HEARTBEAT_SEC = 30.0  # botpy's fixed interval, when Hello names none


class QQSettings(LinkSettings):
    """``[[channel]] kind = "qq"``: the app id and secret (by environment variable), gateway or
    webhook mode, the intents, and the API hosts (overridable, e.g. the sandbox API)."""

    kind: Literal["qq"] = "qq"
    app_id: str = pydantic.Field(min_length=1)
    secret_env: str = pydantic.Field(min_length=1)
    mode: Literal["gateway", "webhook"] = "gateway"
    token_url: str = pydantic.Field(default="https://bots.qq.com/app/getAppAccessToken", pattern=r"^https?://")
    api_base: str = pydantic.Field(default="https://api.sgroup.qq.com", pattern=r"^https?://")
    intents: list[str] = pydantic.Field(default_factory=lambda: ["PUBLIC_MESSAGES"])
    heartbeat_interval_sec: float | None = pydantic.Field(default=None, gt=0)  # default: Hello's
    max_missed_heartbeats: int = pydantic.Field(default=2, ge=1)
    path: str | None = None  # webhook route; default /qq/<name>
    timeout_sec: float = pydantic.Field(default=15.0, gt=0)
    max_text_chars: int = pydantic.Field(default=2000, ge=100)

    @pydantic.field_validator("intents")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(wire.INTENTS))
        if unknown:
            raise ValueError(f"unknown intents {unknown}; known: {', '.join(wire.INTENTS)}")
        return names


class QQChannel(Channel[QQSettings]):
    """A QQ bot: the gateway connection loop in ``run()`` or the webhook route."""

    kind = "qq"

    def __init__(self, settings: QQSettings, host: ChannelHost) -> None:
        super().__init__(settings, host)
        secret = read_secret(settings.secret_env, f"[[channel]] {settings.name} secret_env", required=True)
        assert secret is not None
        self.key = wire.signing_key(secret)
        self.path = settings.path or f"/qq/{settings.name}"
        self.api = QQApi(
            host.http, settings.app_id, secret, settings.token_url, settings.api_base, settings.timeout_sec
        )
        self.link = LinkState()
        self.policy = Reconnect(settings.reconnect_initial_sec, settings.reconnect_max_sec, settings.first_jitter_sec)
        self.session_id = ""
        self.seq: int | None = None
        self.missed = 0
        self._ready = settings.mode == "webhook"
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    @property
    def capabilities(self) -> Capabilities:
        """Text only (QQ fetches media by URL from its own uploads), up to ``max_text_chars``."""
        return Capabilities(max_text_chars=self.settings.max_text_chars, files=False)

    @property
    def ready(self) -> bool:
        """Replies go by HTTP: ready once the gateway session is up (webhook mode: always)."""
        return self._ready

    def routes(self) -> list[web.RouteDef]:
        """The webhook route (webhook mode only)."""
        return [web.post(self.path, self._webhook)] if self.settings.mode == "webhook" else []

    async def run(self) -> None:
        """Gateway mode: load the kept session, then connect, resume, reconnect on the schedule."""
        if self.settings.mode != "gateway":
            return
        kept = await self.host.load_state(self.name, SESSION_KEY)
        if kept:
            saved = json.loads(kept)
            self.session_id, self.seq = str(saved.get("session_id", "")), saved.get("seq")
        await run_links(self.name, self._link, self.policy, self.link)

    # ── gateway ──────────────────────────────────────────────────────────

    async def _link(self, heard: Callable[[], None]) -> None:
        url = await self.api.gateway_url()
        async with self.host.http.ws_connect(
            url, timeout=aiohttp.ClientWSTimeout(ws_close=1.0), max_msg_size=self.settings.max_body_bytes
        ) as ws:
            self._ws = ws
            self.missed = 0
            try:
                async with anyio.create_task_group() as tg:
                    async for message in ws:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            heard()
                            await self._frame(ws, message.data, tg)
                    tg.cancel_scope.cancel()
            finally:
                self._ready = False
                self._ws = None
        await self._closed(ws.close_code)

    async def _closed(self, code: int | None) -> None:
        if code == wire.AUTH_FAILED:
            self.api.tokens.reset()
        if code in wire.NOT_RESUMABLE:
            await self._forget_session()
        raise LinkDropped(f"the gateway closed the link (code {code})")

    async def _forget_session(self) -> None:
        self.session_id, self.seq = "", None
        await self.host.save_state(self.name, SESSION_KEY, None)

    async def _keep_session(self) -> None:
        value = json.dumps({"session_id": self.session_id, "seq": self.seq})
        await self.host.save_state(self.name, SESSION_KEY, value)

    async def _frame(self, ws: aiohttp.ClientWebSocketResponse, text: str, tg: anyio.abc.TaskGroup) -> None:
        try:
            payload = wire.Payload.model_validate_json(text)
        except pydantic.ValidationError:
            self.host.count(self.name, "rejected_malformed")
            return
        if payload.op == wire.HELLO:
            token = await self.api.tokens.get()
            if self.session_id and self.seq is not None:
                await ws.send_str(json.dumps(wire.resume(token, self.session_id, self.seq)))
            else:
                mask = wire.intents_mask(self.settings.intents)
                await ws.send_str(json.dumps(wire.identify(token, mask)))
            hello = payload.d if isinstance(payload.d, dict) else {}
            interval = self.settings.heartbeat_interval_sec or (
                float(hello["heartbeat_interval"]) / 1000 if hello.get("heartbeat_interval") else DEFAULT_HEARTBEAT_SEC
            )
            tg.start_soon(self._heartbeat, ws, interval)
        elif payload.op == wire.HEARTBEAT_ACK:
            self.missed = 0
        elif payload.op == wire.HEARTBEAT:
            await ws.send_str(json.dumps(wire.heartbeat(self.seq)))
        elif payload.op == wire.RECONNECT:
            self.host.count(self.name, "op7_reconnects")
            raise LinkDropped("the gateway asked for a reconnect (op 7)")
        elif payload.op == wire.INVALID_SESSION:
            self.host.count(self.name, "invalid_sessions")
            if payload.d is not True:  # d=true: the session can still be resumed
                await self._forget_session()
            raise LinkDropped("invalid session (op 9)")
        elif payload.op == wire.DISPATCH:
            await self._dispatch(payload)

    async def _dispatch(self, payload: wire.Payload) -> None:
        if payload.t == "READY":
            d = payload.d if isinstance(payload.d, dict) else {}
            self.session_id = str(d.get("session_id", ""))
            self._up("identified")
        elif payload.t == "RESUMED":
            self._up("resumed")
        stored = False
        if payload.t in (wire.GROUP_MESSAGE, wire.C2C_MESSAGE):
            arrived = time.perf_counter()
            try:
                await self.host.accept(self._inbound(payload))
                stored = True
            except Rejected as error:
                self.host.count(self.name, f"rejected_{error.reason}")
                if error.reason == "overloaded":
                    raise LinkDropped("overloaded: resuming later replays the message") from None
            self.host.timing(self.name, "store_ms", (time.perf_counter() - arrived) * 1000)
        if payload.s is not None:
            self.seq = payload.s  # only after the message is stored: a Resume never skips it
        if (stored or payload.t == "READY") and self.session_id:
            await self._keep_session()

    def _up(self, how: str) -> None:
        self._ready = True
        self.link.state = "connected"
        self.link.connects += 1
        self.link.connected_at = time.time()
        self.host.count(self.name, how)
        self.host.channel_ready(self.name)

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            if self.missed >= self.settings.max_missed_heartbeats:
                self.host.count(self.name, "heartbeat_timeouts")
                await ws.close(code=4000, message=b"heartbeat timeout")
                return
            self.missed += 1
            await ws.send_str(json.dumps(wire.heartbeat(self.seq)))

    def _inbound(self, payload: wire.Payload) -> Inbound:
        try:
            message = wire.Message.model_validate(payload.d)
        except pydantic.ValidationError as exc:
            raise Rejected("malformed", 400, f"{payload.t}: {exc.errors()[0]['msg']}") from None
        group = payload.t == wire.GROUP_MESSAGE
        user = message.author.member_openid if group else (message.author.user_openid or message.author.id)
        chat_id = message.group_openid if group else user
        if not chat_id:
            raise Rejected("malformed", 400, f"{payload.t} names no group_openid or user_openid")
        notes = [f"the user attached {a.filename or a.content_type or 'a file'}" for a in message.attachments]
        return Inbound(
            chat=ChatRef(
                channel=self.name,
                account=self.settings.app_id,
                chat_type="group" if group else "person",
                chat_id=chat_id,
                user_id=user,
            ),
            message_id=message.id,
            text=message.content.strip(),
            note="; ".join(notes),
            reply_to=message.id,
            received_at=time.time(),
        )

    async def shutdown(self) -> None:
        """Close the gateway link (the session stays resumable for the next start)."""
        if self._ws is not None:
            await self._ws.close()

    # ── webhook ──────────────────────────────────────────────────────────

    async def _webhook(self, request: web.Request) -> web.Response:
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            timestamp = request.headers.get("X-Signature-Timestamp", "")
            signature = request.headers.get("X-Signature-Ed25519", "")
            if not timestamp or not wire.verify(self.key, timestamp.encode() + body, signature):
                raise Rejected("bad_signature", 401, "invalid signature")
            try:
                payload = wire.Payload.model_validate_json(body)
            except pydantic.ValidationError:
                raise Rejected("malformed", 400, "body is not a QQ payload {op, d}") from None
            if payload.op == wire.VALIDATION:
                try:
                    return web.json_response(wire.validation_answer(self.key, payload.d))
                except ValueError as exc:
                    raise Rejected("malformed", 400, str(exc)) from None
            if payload.op == wire.DISPATCH and payload.t in (wire.GROUP_MESSAGE, wire.C2C_MESSAGE):
                await self.host.accept(self._inbound(payload))
        except Rejected as error:
            self.host.count(self.name, f"rejected_{error.reason}")
            return refusal(error, {"code": error.status, "message": error.message})
        return web.json_response({"op": wire.HTTP_ACK, "d": 0})

    # ── out ──────────────────────────────────────────────────────────────

    async def send(self, delivery: Delivery) -> SendResult:
        """A passive reply to the message (``msg_id``), ``msg_seq`` = the part's position."""
        outbound = delivery.outbound
        return await self.api.reply(outbound.chat, outbound.text, outbound.reply_to, outbound.sequence)

    def diagnostics(self) -> dict[str, Any]:
        """Mode, the link (gateway mode), whether a session is kept, the last sequence number."""
        found: dict[str, Any] = {"mode": self.settings.mode, "api_base": self.settings.api_base}
        if self.settings.mode == "gateway":
            found |= {**self.link.snapshot(), "resumable": bool(self.session_id), "seq": self.seq}
        else:
            found["path"] = self.path
        return found


KIND = ChannelKind("qq", QQSettings, QQChannel)
