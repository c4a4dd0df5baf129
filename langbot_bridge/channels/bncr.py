"""The bncr WebSocket bridge (seed 003, field-2026-12 §3.4): bncr clients connect to the gateway
at ``<path>`` (default ``/bncr/<name>``) and speak the bridge's request/event frames.

Auth: the client token (``token_env``) as ``Authorization: Bearer`` on the upgrade, or as
``token`` (or ``auth.token``) in ``bncr.connect``; nothing but ``bncr.connect`` is served before.
The latest connection of an account is its primary one and gets the pushes.

In: ``bncr.inbound`` is stored before its ``accepted`` answer; a repeated ``msgId`` gets
``duplicated: true`` and no second reply, also after a reconnect or a restart (without a
``msgId`` there is nothing to recognise a repeat by). Files come inline (``base64``) or by the
``path`` of an earlier ``bncr.file.*`` upload.

Out: push-only ``bncr.push`` events (``type: message.outbound``, ``idempotencyKey`` stable
across retries). With nobody connected, replies wait in the outbox and are flushed when the
account connects again. Files go first as acknowledged 256 KB chunks. With ``require_ack``, a
push counts as delivered only once the client's ``bncr.ack`` arrives.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

import aiohttp
import anyio
import pydantic
from aiohttp import web

from langbot_bridge.channels import bncr_protocol as wire
from langbot_bridge.channels.bncr_files import AckWaiters, Outgoing, TransferError, Uploads, push_file
from langbot_bridge.channels.bncr_inbound import parse_inbound
from langbot_bridge.channels.webhook import same
from langbot_bridge.gateway.channel import (
    Channel,
    ChannelHost,
    ChannelKind,
    ChannelSettings,
    Delivery,
    MiB,
    Rejected,
)
from langbot_bridge.gateway.config import read_secret
from langbot_bridge.gateway.messages import (
    ChatRef,
    Failed,
    Offline,
    Retry,
    SendResult,
    Sent,
)

log = logging.getLogger(__name__)


class BncrSettings(ChannelSettings):
    """``[[channel]] kind = "bncr"``: the WebSocket path, the client token's environment
    variable, push acknowledgement (bncr's ``outboundRequireAck``) and file-transfer limits."""

    kind: Literal["bncr"] = "bncr"
    path: str | None = None  # default /bncr/<name>
    token_env: str = pydantic.Field(min_length=1)
    require_ack: bool = False  # bncr's outboundRequireAck
    ack_timeout_sec: float = pydantic.Field(default=30, gt=0)
    chunk_bytes: int = pydantic.Field(default=256 * 1024, ge=1024)
    chunk_retries: int = pydantic.Field(default=3, ge=1)
    file_ack_timeout_sec: float = pydantic.Field(default=30, gt=0)
    upload_ttl_sec: float = pydantic.Field(default=6 * 3600, gt=0)
    max_attempts: int | None = pydantic.Field(default=10, ge=1)  # bncr's MAX_RETRY
    max_body_bytes: int = pydantic.Field(default=16 * MiB, ge=1024)  # one WebSocket message
    max_file_bytes: int = pydantic.Field(default=50 * MiB, ge=1)


class Connection:
    """One bncr client's WebSocket: its account once ``bncr.connect`` succeeded, and the
    acks its pushes wait for."""

    def __init__(self, ws: web.WebSocketResponse, authenticated: bool) -> None:
        self.ws = ws
        self.authenticated = authenticated
        self.account: str | None = None
        self.client_id = ""
        self.connected_at = time.time()
        self.waiters = AckWaiters()
        self._send_lock = anyio.Lock()

    async def emit(self, frame: dict[str, Any]) -> None:
        """Send one JSON frame; a lock keeps concurrent senders' frames whole."""
        async with self._send_lock:
            await self.ws.send_str(json.dumps(frame, ensure_ascii=False))

    @property
    def open(self) -> bool:
        """Whether the socket is still open."""
        return not self.ws.closed


class BncrChannel(Channel[BncrSettings]):
    """The bncr bridge's server side: clients connect to ``path``, send ``bncr.inbound`` and
    receive ``bncr.push`` events on the newest connection of their account."""

    kind = "bncr"

    def __init__(self, settings: BncrSettings, host: ChannelHost) -> None:
        super().__init__(settings, host)
        token = read_secret(settings.token_env, f"[[channel]] {settings.name} token_env", required=True)
        assert token is not None
        self.token = token
        self.path = settings.path or f"/bncr/{settings.name}"
        self.uploads = Uploads(settings.max_file_bytes, settings.upload_ttl_sec)
        self.connections: dict[str, list[Connection]] = {}  # account -> connections, primary last
        self.started = time.time()
        self.last: dict[str, Any] = {}

    def routes(self) -> list[web.RouteDef]:
        """The WebSocket upgrade on ``path``."""
        return [web.get(self.path, self._websocket)]

    @property
    def ready(self) -> bool:
        """Whether any client is connected (replies wait in the outbox otherwise)."""
        return any(conns for conns in self.connections.values())

    def _primary(self, account: str) -> Connection | None:
        conns = [c for c in self.connections.get(account, []) if c.open]
        return conns[-1] if conns else None

    async def shutdown(self) -> None:
        """Close every client connection with 1001 (going away)."""
        for conns in list(self.connections.values()):
            for conn in conns:
                await conn.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"gateway shutting down")

    # ── the connection ───────────────────────────────────────────────────

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if header and not same(header, f"Bearer {self.token}"):
            self.host.count(self.name, "rejected_bad_token")
            return web.json_response({"error": "invalid token"}, status=401)
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_body_bytes, heartbeat=60)
        await ws.prepare(request)
        conn = Connection(ws, authenticated=bool(header))
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await self._frame(conn, message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await conn.emit(wire.error(None, "binary frames are not part of the bncr protocol"))
        finally:
            self._drop(conn)
        return ws

    def _drop(self, conn: Connection) -> None:
        if conn.account is None:
            return
        conns = self.connections.get(conn.account, [])
        if conn in conns:
            conns.remove(conn)
        if not conns:
            self.connections.pop(conn.account, None)

    async def _frame(self, conn: Connection, text: str) -> None:
        try:
            request = wire.Request.model_validate_json(text)
        except pydantic.ValidationError:
            self.host.count(self.name, "rejected_malformed")
            await conn.emit(wire.error(None, "malformed frame: expected {type:'req', id, method, params}"))
            return
        handler = self._methods.get(request.method)
        if handler is None:
            await conn.emit(wire.error(request.id, f"unknown method {request.method}"))
            return
        if request.method != "bncr.connect" and conn.account is None:
            await conn.emit(wire.error(request.id, "call bncr.connect first"))
            return
        try:
            result = await handler(self, conn, request.params)
        except (Rejected, TransferError, pydantic.ValidationError) as exc:
            reason = exc.reason if isinstance(exc, Rejected) else "malformed"
            self.host.count(self.name, f"rejected_{reason}")
            message = exc.message if isinstance(exc, Rejected) else _first_error(exc)
            await conn.emit(wire.error(request.id, message))
            return
        await conn.emit(wire.response(request.id, result))

    # ── methods ──────────────────────────────────────────────────────────

    async def _connect(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        auth = params.get("auth")
        token = params.get("token") or (auth.get("token") if isinstance(auth, dict) else None)
        if not conn.authenticated and not (isinstance(token, str) and same(token, self.token)):
            raise Rejected("bad_token", 401, "unauthorized: a valid client token is required")
        conn.authenticated = True
        account = str(params.get("accountId") or wire.DEFAULT_ACCOUNT)
        if conn.account is not None and conn.account != account:
            self._drop(conn)
        conn.account = account
        conn.client_id = str(params.get("clientId") or "")
        conns = self.connections.setdefault(account, [])
        if conn in conns:
            conns.remove(conn)
        conns.append(conn)  # the newest connection is the primary one
        self.host.count(self.name, "connects")
        result = {
            "channel": "bncr",
            "accountId": account,
            "bridgeVersion": wire.BRIDGE_VERSION,
            "pushEvent": wire.PUSH_EVENT,
            "online": True,
            "isPrimary": True,
            **(await self._status(account)),
        }
        self.host.channel_ready(self.name)  # flush what waited while nobody was connected
        return result

    async def _status(self, account: str) -> dict[str, Any]:
        backlog = await self.host.backlog(self.name)
        active = len([c for c in self.connections.get(account, []) if c.open])
        return {
            "activeConnections": active,
            "pending": backlog.get("pending", 0),
            "deadLetter": backlog.get("dead", 0),
            "diagnostics": {
                "health": {
                    "connected": active > 0,
                    "pending": backlog.get("pending", 0),
                    "deadLetter": backlog.get("dead", 0),
                    "activeConnections": active,
                    "uptimeSec": round(time.time() - self.started),
                },
                "regression": {"ok": True, "openUploads": len(self.uploads)},
            },
            "now": int(time.time() * 1000),
        }

    async def _activity(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        assert conn.account is not None
        self.last["activityAt"] = int(time.time() * 1000)
        status = await self._status(conn.account)
        del status["diagnostics"]
        return {"accountId": conn.account, "ok": True, "event": "activity", **status}

    async def _diagnostics(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        assert conn.account is not None
        status = await self._status(conn.account)
        runtime = {"linked": status["activeConnections"] > 0, **self.last}
        return {"channel": "bncr", "accountId": conn.account, "runtime": runtime, **status}

    async def _ack(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        ack = wire.Ack.model_validate(params)
        # A push ack is a file ack of stage "push": one waiter registry for both.
        matched = conn.waiters.resolve(
            wire.FileAck(transferId=ack.messageId, stage="push", ok=ack.ok, errorCode="fatal" if ack.fatal else "")
        )
        return {"ok": True} if matched else {"ok": True, "message": "already-acked-or-missing"}

    async def _inbound(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        assert conn.account is not None
        parsed = parse_inbound(params, self.name, conn.account, self.uploads, self.settings.max_file_bytes)
        accepted = await self.host.accept(parsed.inbound, parsed.files)
        now = int(time.time() * 1000)
        self.last.update(lastSessionKey=parsed.session_key, lastSessionScope=f"bncr:{parsed.route.scope}")
        self.last["lastInboundAt"] = now
        result: dict[str, Any] = {
            "accepted": True,
            "accountId": conn.account,
            "sessionKey": parsed.session_key,
            "msgId": parsed.msg_id,
            "taskKey": parsed.task,
        }
        if accepted.duplicate:
            result["duplicated"] = True
        return result

    async def _file_init(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        assert conn.account is not None
        return self.uploads.init(wire.FileInit.model_validate(params), conn.account)

    async def _file_chunk(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return self.uploads.chunk(wire.FileChunk.model_validate(params))

    async def _file_complete(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return self.uploads.complete(str(params.get("transferId") or ""))

    async def _file_abort(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return self.uploads.abort(str(params.get("transferId") or ""))

    async def _file_ack(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        matched = conn.waiters.resolve(wire.FileAck.model_validate(params))
        return {"ok": True, "matched": matched}

    _methods = {
        "bncr.connect": _connect,
        "bncr.inbound": _inbound,
        "bncr.activity": _activity,
        "bncr.ack": _ack,
        "bncr.diagnostics": _diagnostics,
        "bncr.file.init": _file_init,
        "bncr.file.chunk": _file_chunk,
        "bncr.file.complete": _file_complete,
        "bncr.file.abort": _file_abort,
        "bncr.file.ack": _file_ack,
    }

    # ── out ──────────────────────────────────────────────────────────────

    async def send(self, delivery: Delivery) -> SendResult:
        """Push one message (a file first goes over as acknowledged chunks) to the account's
        primary connection; ``Offline`` when none is connected, so it waits for the next one."""
        outbound = delivery.outbound
        chat = outbound.chat
        conn = self._primary(chat.account)
        if conn is None:
            return Offline(f"no bncr client of account {chat.account} is connected")
        route = wire.Route(str(chat.route["platform"]), str(chat.route["groupId"]), str(chat.route["userId"]))
        session_key = route.session_key + (f":task:{chat.thread}" if chat.thread else "")
        message: dict[str, Any] = {
            "platform": route.platform,
            "groupId": route.group_id,
            "userId": route.user_id,
            "type": "text",
            "msg": outbound.text,
            "path": "",
            "base64": "",
            "fileName": "",
            "mimeType": "",
        }
        try:
            if outbound.file is not None:
                meta = outbound.file
                outgoing = Outgoing(route, session_key, meta.name, meta.mime_type, await delivery.read_file())
                path = await push_file(
                    conn.emit,
                    conn.waiters,
                    outgoing,
                    chunk_bytes=self.settings.chunk_bytes,
                    retries=self.settings.chunk_retries,
                    ack_timeout=self.settings.file_ack_timeout_sec,
                )
                major = meta.mime_type.split("/", 1)[0]
                message |= {
                    "type": major if major in ("image", "video") else "file",
                    "path": path,
                    "fileName": meta.name,
                    "mimeType": meta.mime_type,
                    "transferMode": "chunk",
                }
            return await self._push(conn, outbound.idempotency_key, session_key, message)
        except TransferError as exc:
            return Retry(str(exc))
        except (ConnectionResetError, RuntimeError, aiohttp.ClientError) as exc:  # the socket went away mid-send
            return Offline(f"the bncr connection closed while sending: {exc}")

    async def _push(self, conn: Connection, key: str, session_key: str, message: dict[str, Any]) -> SendResult:
        payload = {
            "type": "message.outbound",
            "messageId": key,
            "idempotencyKey": key,
            "sessionKey": session_key,
            "message": message,
            "ts": int(time.time() * 1000),
        }
        wait = conn.waiters.expect(key, "push") if self.settings.require_ack else None
        await conn.emit(wire.event(wire.PUSH_EVENT, payload))
        self.last["lastOutboundAt"] = int(time.time() * 1000)
        if wait is None:
            return Sent(key)
        ack = await wait(self.settings.ack_timeout_sec)
        if ack is None:
            return Retry("push-delivery-unconfirmed")
        if ack.ok:
            return Sent(key)
        return Failed("the client refused the message (fatal ack)") if ack.errorCode == "fatal" else Retry("nack")

    def resolve_target(self, target: str) -> ChatRef | None:
        """The chat any of bncr's six target forms names (``bncr:<platform>:<group>:<user>`` ...)."""
        parsed = wire.parse_target(target)
        if parsed is None:
            return None
        route, task = parsed
        return ChatRef(
            channel=self.name,
            account=wire.DEFAULT_ACCOUNT,  # any account: the gateway matches the known chat
            chat_type="group" if route.is_group else "person",
            chat_id=route.scope,
            user_id=route.user_id,
            thread=task or "",
        )

    def diagnostics(self) -> dict[str, Any]:
        """Connections per account, open uploads, and the last inbound/outbound/activity times."""
        return {
            "path": self.path,
            "accounts": {account: len(conns) for account, conns in self.connections.items()},
            "open_uploads": len(self.uploads),
            **self.last,
        }


def _first_error(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'params'}: {first['msg']}"
    return str(exc)


KIND = ChannelKind("bncr", BncrSettings, BncrChannel)
