"""The WeCom AI bot (智能机器人) over its long connection (seed 000; field-2026-12 §3.2): no
public address needed.

Our own client, faithful to WeCom's Node SDK (``aibot-node-sdk``): the Python SDK
(``wecom-aibot-python-sdk`` 1.0) cancels its own heartbeat task before closing a socket whose
pings went unanswered, so the dead socket stays; it has no dedup, ignores
``disconnected_event`` and runs replies in unowned tasks.

Link: ``aibot_subscribe`` (an errcode such as 853000 is a refused credential: counted, retried
on the schedule, and after ``max_auth_failures`` in a row the channel stops), then ``ping``
every ``ping_interval_sec``; after ``max_missed_pings`` pings without an ack the socket is
dropped and dialled again. ``disconnected_event`` means another connection took the bot over:
the channel stops and does not reconnect.

In: ``aibot_msg_callback`` is stored (deduplicated on ``msgid``, durably) with its ``req_id``
for the reply; images and files are downloaded and decrypted first. ``enter_chat`` gets the
configured ``welcome`` within WeCom's 5 s.

Out: replies are ``aibot_respond_msg`` stream frames on the callback's ``req_id``, strictly one
at a time per ``req_id``: the next frame waits for the previous one's ack (``ack_timeout_sec``).
Partial replies stream (``finish: false``), the final text closes the stream. Once the
``req_id`` is older than ``req_id_ttl_sec`` (or WeCom refuses it) the reply goes as
``aibot_send_msg`` markdown instead. Files are uploaded in 512 KB chunks and sent by media id.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import anyio
import anyio.abc
import pydantic

from langbot_bridge.channels import wecom_aibot_wire as wire
from langbot_bridge.channels.longconn import LinkDropped, LinkSettings, LinkState, Reconnect, StopChannel, run_links
from langbot_bridge.channels.wecom_aibot_media import download_inbound, upload_file
from langbot_bridge.gateway.channel import Capabilities, Channel, ChannelHost, ChannelKind, Delivery, MiB, Rejected
from langbot_bridge.gateway.config import read_secret
from langbot_bridge.gateway.messages import (
    ChatRef,
    Failed,
    Inbound,
    Offline,
    Retry,
    SendResult,
    Sent,
    StreamFrame,
)

log = logging.getLogger(__name__)

FINISHED_REMEMBERED = 4096


class WeComAiBotSettings(LinkSettings):
    """``[[channel]] kind = "wecom_aibot"``: the bot's id and secret (by environment variable),
    the WebSocket URL, heartbeat and reply timing."""

    kind: Literal["wecom_aibot"] = "wecom_aibot"
    bot_id: str = pydantic.Field(min_length=1)
    secret_env: str = pydantic.Field(min_length=1)
    ws_url: str = pydantic.Field(default="wss://openws.work.weixin.qq.com", pattern=r"^wss?://")
    ping_interval_sec: float = pydantic.Field(default=30.0, gt=0)
    max_missed_pings: int = pydantic.Field(default=2, ge=1)
    ack_timeout_sec: float = pydantic.Field(default=5.0, gt=0)
    req_id_ttl_sec: float = pydantic.Field(default=280.0, gt=0)  # WeCom keeps a req_id for 5 minutes
    max_auth_failures: int = pydantic.Field(default=5, ge=1)
    welcome: str = ""  # sent on enter_chat when set
    stream: bool = True
    media_timeout_sec: float = pydantic.Field(default=15.0, gt=0)
    reconnect_max_sec: float = pydantic.Field(default=30.0, gt=0)
    max_text_chars: int = pydantic.Field(default=6000, ge=100)  # a stream holds 20,480 bytes
    max_file_bytes: int = pydantic.Field(default=20 * MiB, ge=1)  # 100 chunks of 512 KB at most


def stream_body(stream_id: str, finish: bool, content: str) -> dict[str, Any]:
    """An ``aibot_respond_msg`` stream body: the whole text so far under one stream id."""
    return {"msgtype": "stream", "stream": {"id": stream_id, "finish": finish, "content": content}}


class _Acks:
    """Acks matched to the request that waits for them, by ``req_id``; one request at a time
    per ``req_id`` (a reply's frames are strictly serial)."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[anyio.Event, list[wire.Incoming]]] = {}
        self._locks: dict[str, anyio.Lock] = {}

    def lock(self, request_id: str) -> anyio.Lock:
        return self._locks.setdefault(request_id, anyio.Lock())

    def release(self, request_id: str) -> None:
        lock = self._locks.get(request_id)
        if lock is not None and not lock.locked() and lock.statistics().tasks_waiting == 0:
            del self._locks[request_id]

    def expect(self, request_id: str) -> tuple[anyio.Event, list[wire.Incoming]]:
        entry: tuple[anyio.Event, list[wire.Incoming]] = (anyio.Event(), [])
        self._waiting[request_id] = entry
        return entry

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def resolve(self, ack: wire.Incoming) -> bool:
        entry = self._waiting.pop(ack.req_id, None)
        if entry is None:
            return False
        entry[1].append(ack)
        entry[0].set()
        return True


class WeComAiBotChannel(Channel[WeComAiBotSettings]):
    """A WeCom AI bot on its long connection; streams partial replies."""

    kind = "wecom_aibot"

    def __init__(self, settings: WeComAiBotSettings, host: ChannelHost) -> None:
        super().__init__(settings, host)
        secret = read_secret(settings.secret_env, f"[[channel]] {settings.name} secret_env", required=True)
        assert secret is not None
        self.secret = secret
        self.link = LinkState()
        self.policy = Reconnect(settings.reconnect_initial_sec, settings.reconnect_max_sec, settings.first_jitter_sec)
        self.acks = _Acks()
        self.auth_failures = 0
        self.missed_pings = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._authenticated = False
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()

    @property
    def capabilities(self) -> Capabilities:
        """Streams partial replies (when ``stream``); text and files within the caps."""
        return Capabilities(
            streaming=self.settings.stream,
            max_text_chars=self.settings.max_text_chars,
            max_file_bytes=self.settings.max_file_bytes,
        )

    @property
    def ready(self) -> bool:
        """Authenticated on an open socket: replies can go out."""
        return self._authenticated and self._ws is not None and not self._ws.closed

    async def run(self) -> None:
        """Connect, subscribe, serve, reconnect on the schedule; stop on ``disconnected_event``."""
        await run_links(self.name, self._link, self.policy, self.link)

    # ── the link ─────────────────────────────────────────────────────────

    async def _link(self, heard: Callable[[], None]) -> None:
        async with self.host.http.ws_connect(
            self.settings.ws_url,
            timeout=aiohttp.ClientWSTimeout(ws_close=1.0),
            max_msg_size=self.settings.max_body_bytes,
        ) as ws:
            self._ws = ws
            self.missed_pings = 0
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._read, ws, heard, tg)
                    await self._subscribe(ws)
                    tg.start_soon(self._heartbeat, ws)
            finally:
                self._authenticated = False
                self._ws = None

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        request_id = wire.req_id(wire.SUBSCRIBE)
        done, box = self.acks.expect(request_id)
        await ws.send_str(
            json.dumps(wire.frame(wire.SUBSCRIBE, request_id, {"bot_id": self.settings.bot_id, "secret": self.secret}))
        )
        with anyio.move_on_after(self.settings.connect_timeout_sec):
            await done.wait()
        self.acks.forget(request_id)
        if not box:
            raise LinkDropped("no answer to aibot_subscribe")
        if box[0].errcode != 0:
            self.auth_failures += 1
            self.host.count(self.name, "auth_failures")
            why = f"aibot_subscribe refused: errcode {box[0].errcode} {box[0].errmsg}".strip()
            if self.auth_failures >= self.settings.max_auth_failures:
                raise StopChannel(f"{why} ({self.auth_failures} times in a row; check bot_id and the secret)")
            raise LinkDropped(why)
        self.auth_failures = 0
        self._authenticated = True
        self.link.state = "connected"
        self.link.connects += 1
        self.link.connected_at = time.time()
        self.host.channel_ready(self.name)

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await anyio.sleep(self.settings.ping_interval_sec)
            if self.missed_pings >= self.settings.max_missed_pings:
                self.host.count(self.name, "heartbeat_timeouts")
                raise LinkDropped(f"{self.missed_pings} pings without an ack")
            self.missed_pings += 1
            await ws.send_str(json.dumps(wire.frame(wire.PING, wire.req_id(wire.PING))))

    async def _read(
        self, ws: aiohttp.ClientWebSocketResponse, heard: Callable[[], None], tg: anyio.abc.TaskGroup
    ) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            heard()
            try:
                incoming = wire.Incoming.model_validate_json(message.data)
            except pydantic.ValidationError:
                self.host.count(self.name, "rejected_malformed")
                continue
            if incoming.cmd == wire.MSG_CALLBACK:
                await self._message(incoming)
            elif incoming.cmd == wire.EVENT_CALLBACK:
                self._event(incoming, tg)
            elif not incoming.cmd:
                if incoming.req_id.startswith(wire.PING + "_"):
                    self.missed_pings = 0
                elif not self.acks.resolve(incoming):
                    self.host.count(self.name, "acks_unmatched")
        raise LinkDropped(f"the socket closed (code {ws.close_code})")

    def _event(self, incoming: wire.Incoming, tg: anyio.abc.TaskGroup) -> None:
        event = incoming.body.get("event", {})
        kind = str(event.get("eventtype", "")) if isinstance(event, dict) else ""
        self.host.count(self.name, f"event_{kind or 'unknown'}")
        if kind == "disconnected_event":
            raise StopChannel("disconnected_event: another connection took this bot over; not reconnecting")
        if kind == "enter_chat" and self.settings.welcome:
            body = {"msgtype": "text", "text": {"content": self.settings.welcome}}
            tg.start_soon(self._welcome, incoming.req_id, body)

    async def _welcome(self, request_id: str, body: dict[str, Any]) -> None:
        ack = await self._request(wire.RESPOND_WELCOME, request_id, body)
        if ack is None or ack.errcode != 0:
            self.host.count(self.name, "welcome_failed")

    async def _message(self, incoming: wire.Incoming) -> None:
        arrived = time.perf_counter()
        try:
            body = wire.MessageBody.model_validate(incoming.body)
        except pydantic.ValidationError as exc:
            self.host.count(self.name, "rejected_malformed")
            log.info("channel %s: unreadable aibot_msg_callback: %s", self.name, exc.errors()[0]["msg"])
            return
        group = body.chattype == "group"
        chat = ChatRef(
            channel=self.name,
            account=self.settings.bot_id,
            chat_type="group" if group else "person",
            chat_id=(body.chatid or body.sender.userid) if group else body.sender.userid,
            user_id=body.sender.userid,
            route={"req_id": incoming.req_id, "at": time.time(), "chatid": body.chatid or body.sender.userid},
        )
        files, metas, note = await download_inbound(self.host.http, body, self.settings.media_timeout_sec)
        inbound = Inbound(
            chat=chat,
            message_id=body.msgid,
            text=body.content(),
            kind=body.msgtype,
            note=note,
            files=metas,
            reply_to=body.msgid,
            received_at=time.time(),
        )
        try:
            await self.host.accept(inbound, files)
        except Rejected as error:
            self.host.count(self.name, f"rejected_{error.reason}")
            return
        self.host.timing(self.name, "store_ms", (time.perf_counter() - arrived) * 1000)

    async def shutdown(self) -> None:
        """Close the socket so WeCom stops delivering to this process."""
        if self._ws is not None:
            await self._ws.close()

    # ── requests that wait for their ack ─────────────────────────────────

    async def _request(self, cmd: str, request_id: str, body: dict[str, Any]) -> wire.Incoming | None:
        """Send one frame on ``request_id`` after the previous one got its ack; its ack, or None
        when none came in time. Raises ``ConnectionError`` when there is no link."""
        async with self.acks.lock(request_id):
            ws = self._ws
            if ws is None or ws.closed or not self._authenticated:
                raise ConnectionError("not connected")
            done, box = self.acks.expect(request_id)
            try:
                await ws.send_str(json.dumps(wire.frame(cmd, request_id, body), ensure_ascii=False))
                with anyio.move_on_after(self.settings.ack_timeout_sec):
                    await done.wait()
            finally:
                self.acks.forget(request_id)
        self.acks.release(request_id)
        return box[0] if box else None

    def _stream_id(self, reply_to: str) -> str:
        return "s" + hashlib.sha256(reply_to.encode()).hexdigest()[:24]

    def _reply_valid(self, chat: ChatRef) -> bool:
        return (
            bool(chat.route.get("req_id"))
            and time.time() - float(chat.route.get("at", 0)) < self.settings.req_id_ttl_sec
        )

    async def stream(self, frame: StreamFrame) -> None:
        """A partial reply: a stream frame with ``finish: false`` on the callback's ``req_id``."""
        if not self._reply_valid(frame.chat):
            return
        body = {
            "msgtype": "stream",
            "stream": {"id": self._stream_id(frame.reply_to), "finish": False, "content": frame.text},
        }
        ack = await self._request(wire.RESPOND, str(frame.chat.route["req_id"]), body)
        if ack is None or ack.errcode != 0:
            raise RuntimeError(f"stream frame not acknowledged: {ack.errmsg if ack else 'no ack'}")

    async def send(self, delivery: Delivery) -> SendResult:
        """One reply part: the stream's closing frame (or a stream of its own), a file by media
        id, or ``aibot_send_msg`` once the ``req_id`` is too old."""
        outbound = delivery.outbound
        chat = outbound.chat
        try:
            if outbound.file is not None:
                data = await delivery.read_file()
                media = await upload_file(self._request, outbound.file, data)
                kind = "image" if outbound.file.mime_type.startswith("image/") else "file"
                body: dict[str, Any] = {"msgtype": kind, kind: {"media_id": media}}
            else:
                first = outbound.reply_to not in self._finished
                key = outbound.reply_to if first else f"{outbound.reply_to}#{outbound.sequence}"
                body = {
                    "msgtype": "stream",
                    "stream": {"id": self._stream_id(key), "finish": True, "content": outbound.text},
                }
            if self._reply_valid(chat):
                ack = await self._request(wire.RESPOND, str(chat.route["req_id"]), body)
                if ack is not None and ack.errcode == 0:
                    return self._done(outbound.reply_to)
                self.host.count(self.name, "reply_fallbacks")
            return await self._proactive(chat, outbound.text, body)
        except ConnectionError:
            return Offline("the WeCom AI bot link is down")
        except LinkDropped as exc:
            return Retry(str(exc))

    async def _proactive(self, chat: ChatRef, text: str, reply_body: dict[str, Any]) -> SendResult:
        if reply_body["msgtype"] == "stream":
            body: dict[str, Any] = {"msgtype": "markdown", "markdown": {"content": text}}
        else:
            body = dict(reply_body)
        body["chatid"] = str(chat.route.get("chatid") or chat.chat_id)
        ack = await self._request(wire.SEND, wire.req_id(wire.SEND), body)
        if ack is None:
            return Retry("aibot_send_msg got no ack")
        if ack.errcode != 0:
            return Failed(f"aibot_send_msg refused: errcode {ack.errcode} {ack.errmsg}")
        return Sent()

    def _done(self, reply_to: str) -> Sent:
        self._finished[reply_to] = None
        while len(self._finished) > FINISHED_REMEMBERED:
            self._finished.popitem(last=False)
        return Sent()

    def diagnostics(self) -> dict[str, Any]:
        """The link (state, connects, drops, last error), missed pings, auth failures in a row."""
        return {
            **self.link.snapshot(),
            "ws_url": self.settings.ws_url,
            "missed_pings": self.missed_pings,
            "auth_failures": self.auth_failures,
        }


KIND = ChannelKind("wecom_aibot", WeComAiBotSettings, WeComAiBotChannel)
