"""WeCom's side of app messages and WeChat customer service (微信客服), written from WeCom's
published callback scheme (WXBizMsgCrypt) and API documentation, as field-2026-12 and seed 001's
``wecom``/``wecomcs`` notes describe them, not from our channel:

- Callbacks: the message XML is encrypted (AES-256-CBC, key = base64(EncodingAESKey + "="),
  IV = key[:16], PKCS#7 to 32 bytes, plaintext = 16 random bytes + 4-byte length + XML + corp
  id), wrapped in ``<xml><ToUserName/><Encrypt/><AgentID/></xml>`` and POSTed with
  ``msg_signature`` = SHA-1 of the sorted token, timestamp, nonce and ciphertext. URL
  verification is a GET with an encrypted ``echostr`` whose plaintext must come back.
- API: ``gettoken?corpid&corpsecret`` -> ``access_token`` (7200 s); ``message/send``;
  ``kf/sync_msg {cursor, token, limit, open_kfid}`` -> ``{next_cursor, has_more, msg_list}``;
  ``kf/send_msg {touser, open_kfid, msgtype, text}``. Errors are ``{errcode, errmsg}`` with HTTP
  200: 42001 expired token, 45009 frequency limit, 95001 customer-service send limit.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import secrets
import struct
import time
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from integration_tests.gateway_peers.server_base import PeerServer


class WXBizMsgCrypt:
    """The published scheme, as WeCom's own sample code implements it."""

    def __init__(self, token: str, encoding_aes_key: str, corp_id: str) -> None:
        self.token = token
        self.key = base64.b64decode(encoding_aes_key + "=")
        self.corp_id = corp_id

    def signature(self, timestamp: str, nonce: str, encrypted: str) -> str:
        return hashlib.sha1("".join(sorted([self.token, timestamp, nonce, encrypted])).encode()).hexdigest()

    def encrypt(self, text: str) -> str:
        raw = text.encode()
        plain = os.urandom(16) + struct.pack("!I", len(raw)) + raw + self.corp_id.encode()
        pad = 32 - len(plain) % 32
        encryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16])).encryptor()
        return base64.b64encode(encryptor.update(plain + bytes([pad]) * pad) + encryptor.finalize()).decode()

    def decrypt(self, encrypted: str) -> str:
        decryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16])).decryptor()
        plain = decryptor.update(base64.b64decode(encrypted)) + decryptor.finalize()
        plain = plain[: -plain[-1]]
        (length,) = struct.unpack("!I", plain[16:20])
        assert plain[20 + length :] == self.corp_id.encode()
        return plain[20 : 20 + length].decode()


def xml(fields: dict[str, Any]) -> str:
    return "<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()) + "</xml>"


class WeComServer(PeerServer):
    def __init__(self, corp_id: str, secrets_by_app: dict[str, str], token: str, aes_key: str) -> None:
        super().__init__()
        self.corp_id = corp_id
        self.secrets = secrets_by_app  # corpsecret -> app name ("app" or "kf")
        self.crypt = WXBizMsgCrypt(token, aes_key, corp_id)
        self.tokens: set[str] = set()
        self.token_fetches = 0
        self.sent: list[dict[str, Any]] = []  # message/send and kf/send_msg bodies, with "_api"
        self.inject: collections.deque[int] = collections.deque()  # errcodes for the next send calls
        self.kf_messages: list[dict[str, Any]] = []  # everything sync_msg can return, in order
        self.sync_calls: list[dict[str, Any]] = []
        self._http: aiohttp.ClientSession | None = None

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/cgi-bin/gettoken", self._gettoken)
        app.router.add_post("/cgi-bin/message/send", self._send)
        app.router.add_post("/cgi-bin/kf/send_msg", self._send)
        app.router.add_post("/cgi-bin/kf/sync_msg", self._sync)

    @property
    def api_base(self) -> str:
        return f"{self.url}/cgi-bin"

    def expire_tokens(self) -> None:
        self.tokens.clear()

    # ── API ──────────────────────────────────────────────────────────────

    async def _gettoken(self, request: web.Request) -> web.Response:
        if request.query.get("corpid") != self.corp_id or request.query.get("corpsecret") not in self.secrets:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        token = secrets.token_hex(16)
        self.tokens.add(token)
        self.token_fetches += 1
        return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200})

    def _token_error(self, request: web.Request) -> web.Response | None:
        if request.query.get("access_token") not in self.tokens:
            return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
        return None

    async def _send(self, request: web.Request) -> web.Response:
        refused = self._token_error(request)
        if refused is not None:
            return refused
        if self.inject:
            code = self.inject.popleft()
            return web.json_response({"errcode": code, "errmsg": "injected"})
        body = await request.json()
        body["_api"] = request.path.removeprefix("/cgi-bin/")
        self.sent.append(body)
        self.notify()
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": secrets.token_hex(8)})

    async def _sync(self, request: web.Request) -> web.Response:
        refused = self._token_error(request)
        if refused is not None:
            return refused
        body = await request.json()
        self.sync_calls.append(body)
        mine = [m for m in self.kf_messages if m["open_kfid"] == body.get("open_kfid")]
        start = int(body["cursor"].removeprefix("c")) if body.get("cursor") else 0
        page = mine[start : start + int(body.get("limit", 1000))]
        end = start + len(page)
        self.notify()
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "next_cursor": f"c{end}", "has_more": int(end < len(mine)), "msg_list": page}
        )

    def customer_says(self, open_kfid: str, user: str, text: str, *, origin: int = 3) -> str:
        msgid = secrets.token_hex(8)
        self.kf_messages.append(
            {
                "msgid": msgid,
                "open_kfid": open_kfid,
                "external_userid": user,
                "send_time": int(time.time()),
                "origin": origin,
                "msgtype": "text",
                "text": {"content": text},
            }
        )
        return msgid

    # ── callbacks ────────────────────────────────────────────────────────

    def signed_query(self, encrypted: str) -> dict[str, str]:
        timestamp, nonce = str(int(time.time())), secrets.token_hex(5)
        return {
            "msg_signature": self.crypt.signature(timestamp, nonce, encrypted),
            "timestamp": timestamp,
            "nonce": nonce,
        }

    async def verify_url(self, url: str) -> tuple[int, str, str]:
        """URL verification; returns (status, answer, the plaintext it should be)."""
        plain = secrets.token_hex(10)
        echostr = self.crypt.encrypt(plain)
        query = {**self.signed_query(echostr), "echostr": echostr}
        async with aiohttp.ClientSession() as http, http.get(url, params=query) as response:
            return response.status, await response.text(), plain

    def envelope(self, inner: dict[str, Any], agent_id: str = "") -> tuple[bytes, dict[str, str]]:
        encrypted = self.crypt.encrypt(xml(inner))
        outer = {"ToUserName": self.corp_id, "Encrypt": encrypted, "AgentID": agent_id}
        return xml(outer).encode(), self.signed_query(encrypted)

    async def post(self, url: str, body: bytes, query: dict[str, str]) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, http.post(url, data=body, params=query) as response:
            return response.status, await response.text()

    async def callback(self, url: str, inner: dict[str, Any], agent_id: str = "") -> tuple[int, str]:
        body, query = self.envelope(inner, agent_id)
        return await self.post(url, body, query)

    def app_message(self, user: str, text: str, agent_id: int, msg_id: str | None = None) -> dict[str, Any]:
        return {
            "ToUserName": self.corp_id,
            "FromUserName": user,
            "CreateTime": int(time.time()),
            "MsgType": "text",
            "Content": text,
            "MsgId": msg_id or str(secrets.randbelow(10**18)),
            "AgentID": agent_id,
        }

    def kf_event(self, open_kfid: str) -> dict[str, Any]:
        return {
            "ToUserName": self.corp_id,
            "CreateTime": int(time.time()),
            "MsgType": "event",
            "Event": "kf_msg_or_event",
            "Token": "sync-" + secrets.token_hex(6),
            "OpenKfId": open_kfid,
        }

    def texts(self, api: str) -> list[str]:
        return [m["text"]["content"] for m in self.sent if m["_api"] == api]


def parse(text: str) -> dict[str, str]:
    return {child.tag: child.text or "" for child in ET.fromstring(text)}
