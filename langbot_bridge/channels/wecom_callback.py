"""What WeCom's callback channels share (app messages ``wecom_app``, customer service
``wecom_kf``): the encrypted callback URL and the ``cgi-bin`` API with its access token.

Callback URL (default ``/wecom/<name>``): ``GET ?msg_signature&timestamp&nonce&echostr`` is the
URL verification (the signature checked, ``echostr`` decrypted and echoed); ``POST`` carries an
encrypted XML body, checked and decrypted before the channel sees it. A callback that does not
verify gets 401, one that does not decrypt or parse 400; neither stores anything.

API: ``GET {api_base_url}/gettoken?corpid&corpsecret`` -> ``access_token`` (cached until shortly
before ``expires_in``); every call's ``errcode`` decides: 0 sent; an invalid or expired token
(40001, 40014, 41001, 42001) fetches a new one and tries again; the busy and frequency codes in
``retry_errcodes`` (-1, 45009, 45033 by default) are retried with backoff; anything else, such
as customer service's 95001 send limit (5 messages per customer per 48 h), is a dead letter
with the reason.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pydantic
from aiohttp import web

from langbot_bridge.channels import wecom_crypt as crypt
from langbot_bridge.channels.longconn import LinkDropped
from langbot_bridge.channels.tokens import TokenCache
from langbot_bridge.channels.webhook import read_body, refusal
from langbot_bridge.gateway.channel import Channel, ChannelHost, ChannelSettings, Rejected
from langbot_bridge.gateway.config import read_secret
from langbot_bridge.gateway.messages import Failed, Retry, SendResult, Sent

log = logging.getLogger(__name__)

TOKEN_ERRORS = (40001, 40014, 41001, 42001)


class WeComCallbackSettings(ChannelSettings):
    """The corp, the app's secret, the callback token and EncodingAESKey (all three by
    environment variable), and the API base (overridable for a proxy)."""

    corpid: str = pydantic.Field(min_length=1)
    secret_env: str = pydantic.Field(min_length=1)
    token_env: str = pydantic.Field(min_length=1)
    aes_key_env: str = pydantic.Field(min_length=1)
    api_base_url: str = pydantic.Field(default="https://qyapi.weixin.qq.com/cgi-bin", pattern=r"^https?://")
    path: str | None = None  # the callback route; default /wecom/<name>
    retry_errcodes: list[int] = pydantic.Field(default_factory=lambda: [-1, 45009, 45033])
    timeout_sec: float = pydantic.Field(default=15.0, gt=0)
    max_text_chars: int = pydantic.Field(default=2000, ge=100)


class WeComApi:
    """``cgi-bin`` calls with the cached access token; errcodes classified for the outbox."""

    def __init__(self, http: aiohttp.ClientSession, settings: WeComCallbackSettings, secret: str) -> None:
        self.http = http
        self.settings = settings
        self.base = settings.api_base_url.rstrip("/")
        self._secret = secret
        self.tokens = TokenCache(self._fetch_token)
        self.timeout = aiohttp.ClientTimeout(total=settings.timeout_sec)

    async def _fetch_token(self) -> tuple[str, float]:
        params = {"corpid": self.settings.corpid, "corpsecret": self._secret}
        try:
            async with self.http.get(f"{self.base}/gettoken", params=params, timeout=self.timeout) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LinkDropped(f"gettoken: {type(exc).__name__}: {exc}") from None
        if not isinstance(answer, dict) or answer.get("errcode", 0) != 0 or not answer.get("access_token"):
            code = answer.get("errcode") if isinstance(answer, dict) else None
            raise LinkDropped(f"gettoken refused: errcode {code}")
        return str(answer["access_token"]), float(answer.get("expires_in", 7200))

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path``; the answer (``errcode`` 0), fetching a new token once when
        the token was refused. Raises ``LinkDropped`` (retry) or ``ApiError`` (errcode)."""
        for attempt in (1, 2):
            token = await self.tokens.get()
            try:
                async with self.http.post(
                    f"{self.base}/{path}", params={"access_token": token}, json=body, timeout=self.timeout
                ) as response:
                    status, text = response.status, await response.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise LinkDropped(f"{path}: {type(exc).__name__}: {exc}") from None
            if status != 200:
                raise LinkDropped(f"{path} answered HTTP {status}")
            try:
                answer = json.loads(text)
            except ValueError:
                raise LinkDropped(f"{path} answered something that is not JSON") from None
            code = int(answer.get("errcode", 0)) if isinstance(answer, dict) else -1
            if code in TOKEN_ERRORS and attempt == 1:
                self.tokens.reset()
                continue
            if code != 0:
                raise ApiError(path, code, str(answer.get("errmsg", "")) if isinstance(answer, dict) else "")
            return dict(answer)
        raise AssertionError("unreachable")

    async def send(self, path: str, body: dict[str, Any]) -> SendResult:
        """A send call as the outbox's verdict."""
        try:
            answer = await self.call(path, body)
        except LinkDropped as exc:
            return Retry(str(exc))
        except ApiError as exc:
            if exc.code in self.settings.retry_errcodes or exc.code in TOKEN_ERRORS:
                return Retry(str(exc))
            return Failed(str(exc))
        return Sent(str(answer.get("msgid", "")))


class ApiError(Exception):
    """A ``cgi-bin`` call answered a non-zero errcode."""

    def __init__(self, path: str, code: int, message: str) -> None:
        super().__init__(f"{path} refused: errcode {code} {message}".strip())
        self.code = code


class WeComCallbackChannel(Channel[Any]):
    """The callback URL and API of a WeCom app; ``handle`` gets each decrypted callback."""

    def __init__(self, settings: WeComCallbackSettings, host: ChannelHost) -> None:
        super().__init__(settings, host)
        where = f"[[channel]] {settings.name}"
        secret = read_secret(settings.secret_env, f"{where} secret_env", required=True)
        token = read_secret(settings.token_env, f"{where} token_env", required=True)
        aes = read_secret(settings.aes_key_env, f"{where} aes_key_env", required=True)
        assert secret is not None and token is not None and aes is not None
        try:
            self.key = crypt.aes_key(aes)
        except crypt.CryptError as exc:
            from langbot_bridge.gateway.config import GatewayConfigError

            raise GatewayConfigError(f"{where} aes_key_env: {exc}") from None
        self.token = token
        self.path = settings.path or f"/wecom/{settings.name}"
        self.api = WeComApi(host.http, settings, secret)

    def routes(self) -> list[web.RouteDef]:
        """GET (URL verification) and POST (callbacks) on ``path``."""
        return [web.get(self.path, self._verify_url), web.post(self.path, self._callback)]

    def _query(self, request: web.Request) -> tuple[str, str, str]:
        q = request.query
        timestamp, nonce, sig = q.get("timestamp", ""), q.get("nonce", ""), q.get("msg_signature", "")
        if not (timestamp and nonce and sig):
            raise Rejected("bad_signature", 401, "msg_signature, timestamp and nonce are required")
        return timestamp, nonce, sig

    async def _verify_url(self, request: web.Request) -> web.Response:
        try:
            timestamp, nonce, sig = self._query(request)
            echostr = request.query.get("echostr", "")
            try:
                crypt.check_signature(self.token, timestamp, nonce, echostr, sig)
            except crypt.CryptError as exc:
                raise Rejected("bad_signature", 401, str(exc)) from None
            try:
                plain = crypt.decrypt(self.key, echostr, self.settings.corpid)
            except crypt.CryptError as exc:
                raise Rejected("malformed", 400, str(exc)) from None
        except Rejected as error:
            self.host.count(self.name, f"rejected_{error.reason}")
            return refusal(error, {"errcode": error.status, "errmsg": error.message})
        self.host.count(self.name, "url_verified")
        return web.Response(text=plain.decode("utf-8", "replace"))

    async def _callback(self, request: web.Request) -> web.Response:
        try:
            timestamp, nonce, sig = self._query(request)
            body = await read_body(request, self.settings.max_body_bytes)
            try:
                outer = crypt.parse_xml(body)
                encrypted = outer.get("Encrypt", "")
                if not encrypted:
                    raise crypt.CryptError("no Encrypt element")
            except crypt.CryptError as exc:
                raise Rejected("malformed", 400, str(exc)) from None
            try:
                crypt.check_signature(self.token, timestamp, nonce, encrypted, sig)
            except crypt.CryptError as exc:
                raise Rejected("bad_signature", 401, str(exc)) from None
            try:
                fields = crypt.parse_xml(crypt.decrypt(self.key, encrypted, self.settings.corpid))
            except crypt.CryptError as exc:
                raise Rejected("malformed", 400, str(exc)) from None
            await self.handle(fields)
        except Rejected as error:
            self.host.count(self.name, f"rejected_{error.reason}")
            return refusal(error, {"errcode": error.status, "errmsg": error.message})
        return web.Response(text="success")

    async def handle(self, fields: dict[str, str]) -> None:
        """One decrypted callback (its XML fields); raise ``Rejected`` to refuse it."""
        raise NotImplementedError
