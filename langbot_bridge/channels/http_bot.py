"""A signed HTTP bot, in the shape of LangBot 4.11's HTTP bot adapter (field-2026-12 §3.5): any
system can bring its users' messages in this way.

In: ``POST /bots/<bot_id>`` with ``X-LB-Timestamp`` and ``X-LB-Signature`` =
``"sha256=" + hex(HMAC-SHA256(secret, "<ts>." + body))`` inside a 300 s window. The body is
``{session_id, message: <LangBot MessageChain>, session_type: person|group, sender: {id, name,
group_name}}``. An ``X-LB-Idempotency-Key`` seen before gets 409 (kept in the gateway's store,
so also after a restart). Accepted: 202. Errors use LangBot's envelope ``{code, msg, data}``:
400/40001 malformed, 401/40101 bad signature, 409/40901 duplicate, 413/41301 too large,
503/50301 overloaded.

Out: signed POSTs to ``callback_url`` (from config only), ``{session_id, reply_to, sequence,
is_final, stream, message[], timestamp}``, in order per session; 5xx and network errors are
retried, a 4xx is not. Text is a ``Plain`` part; a file an ``Image`` (data URI) or ``File``
(base64 and, with ``[server] public_url``, a download URL).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import time
import uuid
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
from langbot_bridge.gateway.messages import (
    ChatRef,
    Failed,
    Inbound,
    InboundFile,
    Outbound,
    Retry,
    SendResult,
    Sent,
    StreamFrame,
)

log = logging.getLogger(__name__)

HEADER_TIMESTAMP = "X-LB-Timestamp"
HEADER_SIGNATURE = "X-LB-Signature"
HEADER_IDEMPOTENCY = "X-LB-Idempotency-Key"
ERRORS = {  # reason -> (HTTP status, envelope code)
    "malformed": (400, 40001),
    "bad_signature": (401, 40101),
    "duplicate": (409, 40901),
    "too_large": (413, 41301),
    "overloaded": (503, 50301),
}


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """LangBot's ``X-LB-Signature``: ``"sha256=" + hex(HMAC-SHA256(secret, "<ts>." + body))``."""
    return "sha256=" + hmac_sha256_hex(secret, f"{timestamp}.".encode() + body)


def verify(secret: str, body: bytes, timestamp: str | None, signature: str | None, window: float) -> str | None:
    """None when valid, else LangBot's reason: missing_headers, bad_timestamp, expired,
    signature_mismatch."""
    if not timestamp or not signature:
        return "missing_headers"
    try:
        ts = int(timestamp)
    except ValueError:
        return "bad_timestamp"
    if abs(time.time() - ts) > window:
        return "expired"
    if not same(signature.strip(), sign(secret, body, ts)):
        return "signature_mismatch"
    return None


class HttpBotSettings(ChannelSettings):
    """``[[channel]] kind = "http_bot"``: the bot id in the inbound URL, the signing secrets
    (environment variable names), the replay window, and the ``callback_url`` replies go to
    (from config only, so a request can never choose where replies are sent)."""

    kind: Literal["http_bot"] = "http_bot"
    bot_id: str = pydantic.Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    secret_env: str | None = None  # inbound signing secret
    outbound_secret_env: str | None = None  # callback signing secret; default: the inbound one
    signature_required: bool = True
    replay_window_sec: float = pydantic.Field(default=300, gt=0)
    callback_url: str = pydantic.Field(pattern=r"^https?://")
    callback_timeout_sec: float = pydantic.Field(default=15, gt=0)
    max_attempts: int | None = pydantic.Field(default=4, ge=1)  # LangBot's 3 retries after the first try
    default_session_type: Literal["person", "group"] = "person"
    stream: bool = False  # partial replies as callbacks with stream=true, is_final=false
    inline_file_max_bytes: int = pydantic.Field(default=10 * MiB, ge=0)


class Sender(pydantic.BaseModel):
    """The ``sender`` of an inbound request; its ``id`` names the user (default: the session)."""

    id: str | int | None = None
    name: str = "User"
    group_name: str | None = None


class InboundBody(pydantic.BaseModel):
    """The JSON body of ``POST /bots/<bot_id>``: a session, a LangBot message chain and its sender."""

    session_id: str | int
    message: list[dict[str, Any]]
    session_type: Literal["person", "group"] | None = None
    sender: Sender = Sender()


def _refusal(error: Rejected) -> web.Response:
    _, code = ERRORS.get(error.reason, (error.status, error.status * 100 + 1))
    return refusal(error, {"code": code, "msg": error.message, "data": None})


def _data_uri_bytes(value: str) -> tuple[bytes, str]:
    mime = "application/octet-stream"
    payload = value
    if value.startswith("data:") and ";base64," in value:
        head, payload = value.split(";base64,", 1)
        mime = head[5:] or mime
    try:
        return base64.b64decode(payload, validate=True), mime
    except (binascii.Error, ValueError):
        raise Rejected("malformed", 400, "a message part has invalid base64") from None


class HttpBotChannel(Channel[HttpBotSettings]):
    """LangBot's HTTP bot shape as a webhook channel: signed, idempotent requests in (202 once
    stored), signed callbacks out in order per session."""

    kind = "http_bot"

    def __init__(self, settings: HttpBotSettings, host: ChannelHost) -> None:
        super().__init__(settings, host)
        where = f"[[channel]] {settings.name}"
        self.secret = read_secret(settings.secret_env, f"{where} secret_env", required=settings.signature_required)
        outbound = read_secret(settings.outbound_secret_env, f"{where} outbound_secret_env", required=False)
        self.outbound_secret = outbound or self.secret or ""
        if not self.outbound_secret:
            log.warning("channel %s signs its callbacks with no secret: configure secret_env", settings.name)

    @property
    def capabilities(self) -> Capabilities:
        """Streams partial replies when ``stream`` is set; text and files within the configured caps."""
        return Capabilities(
            streaming=self.settings.stream,
            max_text_chars=self.settings.max_text_chars,
            max_file_bytes=self.settings.max_file_bytes,
        )

    def routes(self) -> list[web.RouteDef]:
        """``POST /bots/<bot_id>``, LangBot's inbound URL."""
        return [web.post(f"/bots/{self.settings.bot_id}", self._inbound)]

    # ── in ───────────────────────────────────────────────────────────────

    async def _inbound(self, request: web.Request) -> web.Response:
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            if self.settings.signature_required:
                assert self.secret is not None
                headers = request.headers
                reason = verify(
                    self.secret,
                    body,
                    headers.get(HEADER_TIMESTAMP),
                    headers.get(HEADER_SIGNATURE),
                    self.settings.replay_window_sec,
                )
                if reason is not None:
                    raise Rejected("bad_signature", 401, f"invalid signature: {reason}")
            parsed = self._parse(body)
            key = request.headers.get(HEADER_IDEMPOTENCY, "").strip()
            inbound, files = self._message(parsed, f"idem:{key}" if key else f"auto:{uuid.uuid4().hex}")
            accepted = await self.host.accept(inbound, files)
            if accepted.duplicate:
                raise Rejected("duplicate", 409, "idempotency key already accepted")
        except Rejected as error:
            self.host.count(self.name, f"rejected_{error.reason}")
            return _refusal(error)
        data = {"session_id": inbound.chat.chat_id, "accepted_message_id": inbound.message_id, "aggregating": False}
        return web.json_response({"code": 0, "msg": "accepted", "data": data}, status=202)

    @staticmethod
    def _parse(body: bytes) -> InboundBody:
        try:
            return InboundBody.model_validate_json(body)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise Rejected("malformed", 400, f"{where}: {first['msg']}") from None

    def _message(self, body: InboundBody, message_id: str) -> tuple[Inbound, list[bytes]]:
        session_type = body.session_type or self.settings.default_session_type
        session_id = str(body.session_id)
        if not session_id:
            raise Rejected("malformed", 400, "session_id is empty")
        chat = ChatRef(
            channel=self.name,
            account=self.settings.bot_id,
            chat_type=session_type,
            chat_id=session_id,
            user_id=str(body.sender.id) if body.sender.id is not None else session_id,
            user_name=body.sender.name,
            title=body.sender.group_name or "",
        )
        texts: list[str] = []
        notes: list[str] = []
        files: list[bytes] = []
        metas: list[InboundFile] = []
        for part in body.message:
            kind = part.get("type")
            if kind == "Plain":
                texts.append(str(part.get("text", "")))
            elif kind in ("Image", "File") and part.get("base64"):
                data, mime = _data_uri_bytes(str(part["base64"]))
                name = str(part.get("name") or f"{kind.lower()}-{len(metas) + 1}")
                files.append(data)
                metas.append(InboundFile(name=name, mime_type=mime, size=len(data)))
            elif kind in ("Image", "File", "Voice"):
                notes.append(f"a {kind.lower()} came by reference only; it was not fetched")
            elif kind not in ("Source", "Quote", "At", "AtAll"):
                notes.append(f"a {kind} part is not supported here")
        inbound = Inbound(
            chat=chat,
            message_id=message_id,
            text="".join(texts),
            kind="file" if metas and not texts else "text",
            note="; ".join(notes),
            files=metas,
            received_at=time.time(),
        )
        return inbound, files

    # ── out ──────────────────────────────────────────────────────────────

    async def send(self, delivery: Delivery) -> SendResult:
        """One signed callback with ``is_final`` as the outbox says; the outbox's idempotency
        key goes along so the receiver can drop a retried copy."""
        outbound = delivery.outbound
        parts = [await self._file_part(outbound, delivery)] if outbound.file is not None else []
        if outbound.text or not parts:
            parts.insert(0, {"type": "Plain", "text": outbound.text})
        payload = self._payload(outbound.chat, outbound.reply_to, outbound.sequence, outbound.final, False, parts)
        return await self._post(payload, outbound.idempotency_key)

    async def stream(self, frame: StreamFrame) -> None:
        """A partial reply as a callback with ``stream=true, is_final=false``; raises when the
        receiver refuses it (a lost partial frame is not retried: the final reply follows)."""
        parts = [{"type": "Plain", "text": frame.text}]
        payload = self._payload(frame.chat, frame.reply_to, frame.sequence, False, True, parts)
        result = await self._post(payload, f"{frame.turn}-s{frame.sequence}")
        if not isinstance(result, Sent):
            raise RuntimeError(f"stream callback failed: {result}")

    async def _file_part(self, outbound: Outbound, delivery: Delivery) -> dict[str, Any]:
        meta = outbound.file
        assert meta is not None
        data = await delivery.read_file() if meta.size <= self.settings.inline_file_max_bytes else b""
        encoded = base64.b64encode(data).decode("ascii") if data else ""
        if meta.mime_type.startswith("image/"):
            uri = f"data:{meta.mime_type};base64,{encoded}" if encoded else ""
            return {"type": "Image", "url": delivery.file_url or "", "base64": uri}
        return {"type": "File", "name": meta.name, "size": meta.size, "url": delivery.file_url or "", "base64": encoded}

    def _payload(
        self, chat: ChatRef, reply_to: str, sequence: int, final: bool, stream: bool, parts: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "session_id": chat.chat_id,
            "reply_to": reply_to,
            "sequence": sequence,
            "is_final": final,
            "stream": stream,
            "message": parts,
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        }

    async def _post(self, payload: dict[str, Any], idempotency_key: str) -> SendResult:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            HEADER_TIMESTAMP: str(ts),
            HEADER_SIGNATURE: sign(self.outbound_secret, body, ts),
            HEADER_IDEMPOTENCY: idempotency_key,
        }
        timeout = aiohttp.ClientTimeout(total=self.settings.callback_timeout_sec)
        try:
            async with self.host.http.post(
                self.settings.callback_url, data=body, headers=headers, timeout=timeout
            ) as r:
                status = r.status
                await r.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Retry(f"callback failed: {type(exc).__name__}: {exc}")
        if status < 400:
            return Sent()
        if status >= 500:
            return Retry(f"callback answered HTTP {status}")
        return Failed(f"callback answered HTTP {status}")

    def diagnostics(self) -> dict[str, Any]:
        """The inbound path and whether signatures are required."""
        return {"path": f"/bots/{self.settings.bot_id}", "signed": self.settings.signature_required}


KIND = ChannelKind("http_bot", HttpBotSettings, HttpBotChannel)
