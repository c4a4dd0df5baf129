"""DingTalk Stream mode (seed 002, field-2026-12 §3.1): the bot holds a WebSocket to DingTalk, so
no public address is needed.

Our own client, faithful to the official Python SDK (``dingtalk-stream`` 0.24) rather than the
SDK itself: its loop calls ``requests.post`` on the event loop, waits 10 s before every
reconnect, swallows cancellation (a task group could not stop it), starts an unowned task per
frame, and dedups (where it does at all) in memory for 5 minutes.

Link: ``POST {openapi_base}/v1.0/gateway/connections/open`` -> ``{endpoint, ticket}`` ->
WebSocket ``endpoint?ticket=...``; WebSocket pings every ``ping_interval_sec`` (the Python SDK's
60 s), a link that stops answering them is dropped. SYSTEM ``ping`` is echoed, SYSTEM
``disconnect`` is acked and the link reconnected at once.

In: a chatbot CALLBACK is stored (deduplicated on ``msgId``, durably: a redelivery after a
lost ack, a reconnect or a restart is recognised) **before** its ack ``{code: 200}``; frames are
handled one at a time in arrival order, so a chat's messages keep their order. A frame that
cannot be read is acked 400 and stored nowhere; one refused for overload is not acked, so
DingTalk delivers it again later.

Out: a text reply goes to the message's ``sessionWebhook`` while it is valid (@-ing the sender
in groups), afterwards through the robot OpenAPI (``/v1.0/robot/oToMessages/batchSend`` or
``/v1.0/robot/groupMessages/send`` with an access token from ``/v1.0/oauth2/accessToken``).
Files are not sent (the reply names them instead).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import pydantic

from langbot_bridge.channels import dingtalk_wire as wire
from langbot_bridge.channels.longconn import LinkDropped, LinkSettings, LinkState, Reconnect, run_links
from langbot_bridge.channels.tokens import TokenCache
from langbot_bridge.gateway.channel import Capabilities, Channel, ChannelHost, ChannelKind, Delivery, Rejected
from langbot_bridge.gateway.config import read_secret
from langbot_bridge.gateway.messages import ChatRef, Failed, Inbound, Retry, SendResult, Sent

log = logging.getLogger(__name__)

WEBHOOK_MARGIN_MS = 5_000  # a sessionWebhook this close to expiring is not used


class DingTalkSettings(LinkSettings):
    """``[[channel]] kind = "dingtalk"``: the app's credentials (the secret by environment
    variable), the OpenAPI base (``DINGTALK_OPENAPI_ENDPOINT`` of the SDK), the topic."""

    kind: Literal["dingtalk"] = "dingtalk"
    client_id: str = pydantic.Field(min_length=1)  # the AppKey; also the robotCode unless set
    client_secret_env: str = pydantic.Field(min_length=1)
    robot_code: str | None = None
    openapi_base: str = pydantic.Field(default="https://api.dingtalk.com", pattern=r"^https?://")
    topic: str = wire.BOT_TOPIC
    ping_interval_sec: float = pydantic.Field(default=60.0, gt=0)
    at_sender: bool = True
    timeout_sec: float = pydantic.Field(default=15.0, gt=0)


class DingTalkChannel(Channel[DingTalkSettings]):
    """A DingTalk Stream bot: the connection loop in ``run()``, replies by session webhook."""

    kind = "dingtalk"

    def __init__(self, settings: DingTalkSettings, host: ChannelHost) -> None:
        super().__init__(settings, host)
        secret = read_secret(
            settings.client_secret_env, f"[[channel]] {settings.name} client_secret_env", required=True
        )
        assert secret is not None
        self.secret = secret
        self.base = settings.openapi_base.rstrip("/")
        self.robot_code = settings.robot_code or settings.client_id
        self.link = LinkState()
        self.policy = Reconnect(settings.reconnect_initial_sec, settings.reconnect_max_sec, settings.first_jitter_sec)
        self.tokens = TokenCache(self._fetch_token)
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    @property
    def capabilities(self) -> Capabilities:
        """Text only (files are named in the reply instead), up to ``max_text_chars``."""
        return Capabilities(max_text_chars=self.settings.max_text_chars, files=False)

    @property
    def ready(self) -> bool:
        """Replies go over HTTP, not the stream: sendable whether or not the link is up."""
        return True

    async def run(self) -> None:
        """Connect, serve, reconnect on the schedule, until the gateway stops."""
        await run_links(self.name, self._link, self.policy, self.link)

    # ── the link ─────────────────────────────────────────────────────────

    async def _open(self) -> tuple[str, str]:
        url = f"{self.base}/v1.0/gateway/connections/open"
        body = wire.open_body(self.settings.client_id, self.secret, [self.settings.topic])
        headers = {"Accept": "application/json", "User-Agent": wire.USER_AGENT}
        timeout = aiohttp.ClientTimeout(total=self.settings.connect_timeout_sec)
        async with self.host.http.post(url, json=body, headers=headers, timeout=timeout) as response:
            text = await response.text()
            if response.status != 200:
                raise LinkDropped(f"connections/open answered HTTP {response.status}: {text[:200]}")
        try:
            answer = json.loads(text)
            return str(answer["endpoint"]), str(answer["ticket"])
        except (ValueError, KeyError, TypeError):
            raise LinkDropped("connections/open answered without endpoint and ticket") from None

    async def _link(self, heard: Callable[[], None]) -> None:
        endpoint, ticket = await self._open()
        url = f"{endpoint}{'&' if '?' in endpoint else '?'}ticket={urllib.parse.quote_plus(ticket)}"
        async with self.host.http.ws_connect(
            url,
            heartbeat=self.settings.ping_interval_sec,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            max_msg_size=self.settings.max_body_bytes,
        ) as ws:
            self._ws = ws
            heard()  # DingTalk accepted the ticket: the reconnect schedule starts again
            self.link.state = "connected"
            self.link.connects += 1
            self.link.connected_at = time.time()
            try:
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    heard()
                    arrived = time.perf_counter()
                    if await self._frame(ws, message.data, arrived):
                        raise LinkDropped("DingTalk asked to reconnect (SYSTEM disconnect)")
            finally:
                self._ws = None
        raise LinkDropped(f"the stream closed (code {ws.close_code})")

    async def _frame(self, ws: aiohttp.ClientWebSocketResponse, text: str, arrived: float) -> bool:
        """Handle one frame; True when DingTalk asked for a reconnect."""
        try:
            frame = wire.Frame.model_validate_json(text)
        except pydantic.ValidationError:
            self.host.count(self.name, "rejected_malformed")
            return False
        if frame.type == wire.SYSTEM:
            await ws.send_str(wire.ack(frame, 200, "ok", frame.data))
            self.host.count(self.name, f"system_{frame.topic or 'unknown'}")
            return frame.topic == wire.DISCONNECT
        if frame.type == wire.EVENT:
            await ws.send_str(wire.ack(frame, 200, "ok", frame.data))
            return False
        if frame.type != wire.CALLBACK or frame.topic != self.settings.topic:
            await ws.send_str(wire.ack(frame, 404, "unknown topic", {}))
            return False
        try:
            inbound = self._inbound(frame)
            await self.host.accept(inbound)
        except Rejected as error:
            self.host.count(self.name, f"rejected_{error.reason}")
            if error.reason == "overloaded":
                return False  # no ack: DingTalk delivers it again later
            await ws.send_str(wire.ack(frame, 400, error.message, {}))
            return False
        await ws.send_str(wire.ack(frame, 200, "OK", {"response": "OK"}))
        self.host.timing(self.name, "ack_ms", (time.perf_counter() - arrived) * 1000)
        return False

    def _inbound(self, frame: wire.Frame) -> Inbound:
        try:
            message = wire.ChatbotMessage.model_validate_json(frame.data)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "data"
            raise Rejected("malformed", 400, f"chatbot message {where}: {first['msg']}") from None
        sender = message.senderStaffId or message.senderId
        chat = ChatRef(
            channel=self.name,
            account=self.robot_code,
            chat_type="group" if message.is_group else "person",
            chat_id=message.conversationId if message.is_group else (sender or message.conversationId),
            user_id=sender,
            user_name=message.senderNick,
            title=message.conversationTitle,
            route={
                "webhook": message.sessionWebhook,
                "webhook_expires_ms": message.sessionWebhookExpiredTime,
                "conversation_id": message.conversationId,
                "staff_id": message.senderStaffId,
            },
        )
        text = message.text.content.strip() if message.msgtype == "text" else ""
        note = "" if message.msgtype == "text" else f"the user sent a {message.msgtype} message; it is not shown here"
        return Inbound(
            chat=chat,
            message_id=message.msgId,
            text=text,
            kind=message.msgtype,
            note=note,
            reply_to=message.msgId,
            received_at=time.time(),
        )

    async def shutdown(self) -> None:
        """Close the stream so DingTalk stops delivering to this process."""
        if self._ws is not None:
            await self._ws.close()

    # ── out ──────────────────────────────────────────────────────────────

    async def send(self, delivery: Delivery) -> SendResult:
        """The reply by session webhook while it is valid, else by the robot OpenAPI."""
        outbound = delivery.outbound
        chat = outbound.chat
        route = chat.route
        at = str(route.get("staff_id") or "") if chat.chat_type == "group" and self.settings.at_sender else ""
        at = at if outbound.sequence == 1 else ""
        webhook = str(route.get("webhook") or "")
        expires = int(route.get("webhook_expires_ms") or 0)
        if webhook and expires > time.time() * 1000 + WEBHOOK_MARGIN_MS:
            return await self._post(webhook, wire.text_reply(outbound.text, at or None), {})
        return await self._openapi(chat, outbound.text)

    async def _openapi(self, chat: ChatRef, text: str) -> SendResult:
        try:
            token = await self.tokens.get()
        except LinkDropped as exc:
            return Retry(str(exc))
        param = json.dumps({"content": text}, ensure_ascii=False)
        body: dict[str, Any] = {"robotCode": self.robot_code, "msgKey": "sampleText", "msgParam": param}
        if chat.chat_type == "group":
            url = f"{self.base}/v1.0/robot/groupMessages/send"
            body["openConversationId"] = chat.route.get("conversation_id") or chat.chat_id
        else:
            url = f"{self.base}/v1.0/robot/oToMessages/batchSend"
            body["userIds"] = [chat.user_id or chat.chat_id]
        result = await self._post(url, body, {"x-acs-dingtalk-access-token": token})
        if isinstance(result, Retry) and "HTTP 401" in result.error:
            self.tokens.reset()
        return result

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> SendResult:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_sec)
        try:
            async with self.host.http.post(url, json=body, headers=headers, timeout=timeout) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Retry(f"DingTalk send failed: {type(exc).__name__}: {exc}")
        if status == 401 or status == 429 or status >= 500:
            return Retry(f"DingTalk answered HTTP {status}")
        if status >= 400:
            return Failed(f"DingTalk refused the reply: HTTP {status} {text[:200]}")
        try:
            answer = json.loads(text) if text else {}
        except ValueError:
            answer = {}
        code = answer.get("errcode", 0) if isinstance(answer, dict) else 0
        if code not in (0, None):
            return Failed(f"DingTalk refused the reply: errcode {code} {answer.get('errmsg', '')}")
        return Sent()

    async def _fetch_token(self) -> tuple[str, float]:
        url = f"{self.base}/v1.0/oauth2/accessToken"
        body = {"appKey": self.settings.client_id, "appSecret": self.secret}
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_sec)
        try:
            async with self.host.http.post(url, json=body, timeout=timeout) as response:
                answer = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LinkDropped(f"DingTalk access token: {type(exc).__name__}: {exc}") from None
        if status != 200 or not isinstance(answer, dict) or "accessToken" not in answer:
            raise LinkDropped(f"DingTalk access token refused (HTTP {status})")
        return str(answer["accessToken"]), float(answer.get("expireIn", 7200))

    def diagnostics(self) -> dict[str, Any]:
        """The link's state, connects, drops and last error; the OpenAPI base."""
        return {**self.link.snapshot(), "openapi_base": self.base, "topic": self.settings.topic}


KIND = ChannelKind("dingtalk", DingTalkSettings, DingTalkChannel)
