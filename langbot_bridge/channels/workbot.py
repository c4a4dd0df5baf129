"""WorkBot (seed 004): WeCom messages relayed by a WorkBot server as signed callbacks; replies
through its ``send-message`` API.

In: ``POST <path>`` (default ``/workbot/<name>``). With a secret configured, ``X-Signature`` must
be the hex HMAC-SHA256 of the raw body (compared in constant time). The message is stored
before the answer ``{"code":0,"message":"success"}``, which goes out well within WorkBot's 3 s;
the agent runs afterwards. The same URL takes the result callbacks of sent messages
(``messageId``, ``errorCode``, ``failList``): a failure is sent again or dead-lettered.

A callback has no message id, so its identity is the SHA-256 of its raw body: WorkBot's
redelivery of the same callback is recognised, and two different messages never collide.

Out: ``POST {api_base}/api/robot/send-message`` with ``Authorization: Bearer <token>``,
``titleList`` = the group (or the person), ``atList`` = the sender in groups. At most
``rate_limit`` requests per ``rate_window_sec`` (WorkBot allows 60 a minute); a 429 pauses all
sends and is retried. Files go as a ``fileUrl`` WorkBot downloads from the gateway
(``[server] public_url``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from typing import Any, Literal

import aiohttp
import pydantic
from aiohttp import web

from langbot_bridge.channels.webhook import hmac_sha256_hex, read_body, refusal, same
from langbot_bridge.gateway.channel import (
    Capabilities,
    Channel,
    ChannelHost,
    ChannelKind,
    ChannelSettings,
    Delivery,
    MiB,
    Rejected,
)
from langbot_bridge.gateway.config import read_secret
from langbot_bridge.gateway.messages import ChatRef, Failed, Inbound, InboundFile, Retry, SendResult, Sent
from langbot_bridge.gateway.ratelimit import SlidingWindowLimit

log = logging.getLogger(__name__)

SUCCESS = {"code": 0, "message": "success"}
GROUP_ROOMS = {1, 3}  # 1 external group, 3 internal group; 2 and 4 are contacts
TEXT_TYPES = {1: "text", 15: "text"}  # 15: text replying to a message
DESCRIBED = {0: "unknown", 3: "voice", 5: "video", 7: "mini program", 8: "link", 9: "file", 13: "chat record"}
# Result codes worth sending again: the chat window was not found, the send itself failed.
TRANSIENT_RESULTS = (201101, 201102)


class WorkBotSettings(ChannelSettings):
    """``[[channel]] kind = "workbot"``: the robot, where its token and signing secret come
    from (environment variable names, never the secrets), WorkBot's API base, the send rate
    limit and how group messages are answered."""

    kind: Literal["workbot"] = "workbot"
    robot_id: str = pydantic.Field(min_length=1)
    token_env: str = pydantic.Field(min_length=1)  # the robot's bearer token for send-message
    secret_env: str | None = None  # the callback signing secret; when set, unsigned callbacks are refused
    api_base: str = pydantic.Field(pattern=r"^https?://")
    send_path: str = "/api/robot/send-message"
    path: str | None = None  # our callback route; default /workbot/<name>
    rate_limit: int = pydantic.Field(default=60, ge=1)
    rate_window_sec: float = pydantic.Field(default=60.0, gt=0)
    group_reply: Literal["mention", "all"] = "mention"  # answer group messages only when @-mentioned
    at_sender: bool = True
    await_results: bool = True  # keep sent messages open until WorkBot's result callback
    retry_result_codes: list[int] = pydantic.Field(default_factory=lambda: list(TRANSIENT_RESULTS))
    timeout_sec: float = pydantic.Field(default=15.0, gt=0)
    max_body_bytes: int = pydantic.Field(default=16 * MiB, ge=1024)  # an image comes inline as base64


class Callback(pydantic.BaseModel):
    """A message callback (seed 004, §2)."""

    model_config = pydantic.ConfigDict(extra="allow")

    robotId: str
    robotUuid: str = ""
    spoken: str = ""
    rawSpoken: str = ""
    receivedName: str = pydantic.Field(min_length=1)
    groupName: str = ""
    groupRemark: str = ""
    roomType: int
    atMe: bool = False
    textType: int
    fileBase64: str | None = None
    timestamp: str = ""


class ResultCallback(pydantic.BaseModel):
    """The result of a sent instruction (seed 004, §4)."""

    model_config = pydantic.ConfigDict(extra="allow")

    robotId: str = ""
    messageId: str = pydantic.Field(min_length=1)
    errorCode: int
    errorReason: str = ""
    successList: list[str] = pydantic.Field(default_factory=list)
    failList: list[str] = pydantic.Field(default_factory=list)


def _refusal(error: Rejected) -> web.Response:
    return refusal(error, {"code": error.status, "message": error.message})


class WorkBotChannel(Channel[WorkBotSettings]):
    """A WorkBot robot as a webhook channel: signed callbacks in on ``path``, rate-limited
    ``send-message`` calls out, result callbacks settling what was sent."""

    kind = "workbot"

    def __init__(self, settings: WorkBotSettings, host: ChannelHost) -> None:
        super().__init__(settings, host)
        self.token = read_secret(settings.token_env, f"[[channel]] {settings.name} token_env", required=True)
        secret_env = settings.secret_env
        self.secret = read_secret(secret_env, f"[[channel]] {settings.name} secret_env", required=bool(secret_env))
        self.path = settings.path or f"/workbot/{settings.name}"
        self.url = settings.api_base.rstrip("/") + settings.send_path
        self.limit = SlidingWindowLimit(settings.rate_limit, settings.rate_window_sec)

    @property
    def capabilities(self) -> Capabilities:
        """Text up to ``max_text_chars``; files only when the gateway has a ``public_url``."""
        # WorkBot fetches files by URL: without a public URL for the gateway there is none to give.
        return Capabilities(
            max_text_chars=self.settings.max_text_chars,
            max_file_bytes=self.settings.max_file_bytes,
            files=self.host.public_url is not None,
        )

    def routes(self) -> list[web.RouteDef]:
        """One POST route for both message callbacks and result callbacks."""
        return [web.post(self.path, self._callback)]

    # ── in ───────────────────────────────────────────────────────────────

    async def _callback(self, request: web.Request) -> web.Response:
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            self._verify(request, body)
            data = self._json(body)
            if "messageId" in data and "errorCode" in data:
                await self._result(data)
            else:
                await self._message(data, body)
        except Rejected as error:
            self.host.count(self.name, f"rejected_{error.reason}")
            return _refusal(error)
        return web.json_response(SUCCESS)

    def _verify(self, request: web.Request, body: bytes) -> None:
        if self.secret is None:
            return
        given = request.headers.get("X-Signature", "").strip().lower()
        if not given or not same(given, hmac_sha256_hex(self.secret, body)):
            raise Rejected("bad_signature", 401, "invalid signature")

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except ValueError:
            raise Rejected("malformed", 400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise Rejected("malformed", 400, "body must be a JSON object")
        return data

    async def _message(self, data: dict[str, Any], body: bytes) -> None:
        try:
            callback = Callback.model_validate(data)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise Rejected("malformed", 400, f"{where}: {first['msg']}") from None
        if callback.robotId != self.settings.robot_id:
            raise Rejected("malformed", 400, f"robotId {callback.robotId!r} is not this channel's robot")
        group = callback.roomType in GROUP_ROOMS
        if group and self.settings.group_reply == "mention" and not callback.atMe:
            self.host.count(self.name, "ignored_not_mentioned")
            return
        inbound, files = self._inbound(callback, group, hashlib.sha256(body).hexdigest())
        await self.host.accept(inbound, files)

    def _inbound(self, callback: Callback, group: bool, message_id: str) -> tuple[Inbound, list[bytes]]:
        # WorkBot addresses chats by name; a remark, when set, is the name to use (seed 004, note 5).
        title = (callback.groupRemark or callback.groupName) if group else callback.receivedName
        if group and not title:
            raise Rejected("malformed", 400, "a group message needs groupName")
        chat = ChatRef(
            channel=self.name,
            account=self.settings.robot_id,
            chat_type="group" if group else "person",
            chat_id=title,
            user_id=callback.receivedName,
            user_name=callback.receivedName,
            title=title,
        )
        files: list[bytes] = []
        metas: list[InboundFile] = []
        kind = TEXT_TYPES.get(callback.textType, "")
        note = ""
        if callback.textType == 2:
            kind = "image"
            if callback.fileBase64:
                data = _decode_image(callback.fileBase64)
                files.append(data)
                metas.append(InboundFile(name=f"image-{message_id[:12]}.png", mime_type="image/png", size=len(data)))
            else:
                note = "the user sent an image that WorkBot did not include"
        elif not kind:
            kind = DESCRIBED.get(callback.textType, f"type {callback.textType}")
            note = f"the user sent a {kind} message; its content is not available here"
        inbound = Inbound(
            chat=chat,
            message_id=message_id,
            text=callback.spoken,
            kind=kind,
            note=note,
            files=metas,
            received_at=time.time(),
        )
        return inbound, files

    async def _result(self, data: dict[str, Any]) -> None:
        try:
            result = ResultCallback.model_validate(data)
        except pydantic.ValidationError as exc:
            raise Rejected("malformed", 400, f"bad result callback: {exc.errors()[0]['msg']}") from None
        error = None
        if result.errorCode != 0 or result.failList:
            error = f"WorkBot result {result.errorCode}: {result.errorReason or 'failed'} (failed: {result.failList})"
        # A partial failure (code 0, some recipients failed) is worth another try too.
        retry = result.errorCode in self.settings.retry_result_codes or result.errorCode == 0
        self.host.count(self.name, "result_callbacks")
        await self.host.delivery_result(self.name, result.messageId, error, retry)

    # ── out ──────────────────────────────────────────────────────────────

    async def send(self, delivery: Delivery) -> SendResult:
        """One ``send-message`` call (text, or a file by URL), within the rate limit. A 429 or
        5xx is ``Retry``, a refusal ``Failed``; with ``await_results`` the message stays
        unconfirmed until WorkBot's result callback names its ``messageId``."""
        outbound = delivery.outbound
        chat = outbound.chat
        body: dict[str, Any] = {"robotId": self.settings.robot_id, "titleList": [chat.title or chat.chat_id]}
        if outbound.file is not None:
            if delivery.file_url is None:
                return Failed("sending files through WorkBot needs [server] public_url")
            major = outbound.file.mime_type.split("/", 1)[0]
            kind = major if major in ("image", "video") else "file"
            body |= {
                "type": kind,
                "content": "",
                "fileUrl": delivery.file_url,
                "fileType": major if major in ("image", "audio", "video") else "*",
                "objectName": outbound.file.name,
            }
        else:
            body |= {"type": "text", "content": outbound.text}
            if chat.chat_type == "group" and self.settings.at_sender and chat.user_name and outbound.sequence == 1:
                body["atList"] = [chat.user_name]
        return await self._post(body)

    async def _post(self, body: dict[str, Any]) -> SendResult:
        headers = {"Authorization": f"Bearer {self.token}"}
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_sec)
        async with self.limit.slot():
            try:
                async with self.host.http.post(self.url, json=body, headers=headers, timeout=timeout) as response:
                    status = response.status
                    text = await response.text()
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as exc:
                return Retry(f"send-message failed: {type(exc).__name__}: {exc}")
        if status == 429:
            wait = _seconds(retry_after, self.settings.rate_window_sec)
            self.limit.pause(self.limit.clock() + wait)
            self.host.count(self.name, "http_429")
            return Retry("WorkBot answered 429 (rate limit)", after=wait)
        if status >= 500:
            return Retry(f"WorkBot answered HTTP {status}")
        if status >= 400:
            return Failed(f"WorkBot refused the message: HTTP {status} {text[:200]}")
        try:
            reply = json.loads(text)
        except ValueError:
            return Retry(f"WorkBot answered HTTP {status} with a body that is not JSON")
        if not isinstance(reply, dict) or reply.get("code") != 0:
            message = reply.get("message") if isinstance(reply, dict) else reply
            return Failed(f"WorkBot refused the message: {message}")
        data = reply.get("data")
        message_id = str(data.get("messageId") or "") if isinstance(data, dict) else ""
        return Sent(message_id, confirmed=not (self.settings.await_results and message_id))

    def diagnostics(self) -> dict[str, Any]:
        """The callback path, whether callbacks must be signed, and how often a send waited
        for the rate limit."""
        return {"path": self.path, "signed": self.secret is not None, "rate_limited_waits": self.limit.waited}


def _decode_image(text: str) -> bytes:
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("malformed", 400, "fileBase64 is not valid base64") from None


def _seconds(header: str | None, default: float) -> float:
    try:
        return max(0.0, float(header)) if header else default
    except ValueError:
        return default


KIND = ChannelKind("workbot", WorkBotSettings, WorkBotChannel)
