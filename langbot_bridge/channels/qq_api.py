"""The QQ Bot OpenAPI calls the channel makes: the app access token
(``POST {token_url} {appId, clientSecret}``), ``GET /gateway/bot``, and replies to group and
C2C messages (``POST /v2/groups/{group_openid}/messages``, ``/v2/users/{openid}/messages``,
with ``msg_id`` + ``msg_seq``).

A reply part keeps its ``msg_seq`` across retries (the part's position in the turn's reply), so
QQ itself drops a second copy: its 40054005 ("this msg_seq was used already") after a retry
whose first try went through means delivered.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from langbot_bridge.channels.longconn import LinkDropped
from langbot_bridge.channels.qq_wire import DUPLICATE_SEQ
from langbot_bridge.channels.tokens import TokenCache
from langbot_bridge.gateway.messages import ChatRef, Failed, Retry, SendResult, Sent


class QQApi:
    """Token and OpenAPI calls of one bot."""

    def __init__(
        self, http: aiohttp.ClientSession, app_id: str, secret: str, token_url: str, api_base: str, timeout: float
    ) -> None:
        self.http = http
        self.app_id = app_id
        self._secret = secret
        self.token_url = token_url
        self.api_base = api_base.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.tokens = TokenCache(self._fetch_token, margin=60.0)

    async def _fetch_token(self) -> tuple[str, float]:
        body = {"appId": self.app_id, "clientSecret": self._secret}
        try:
            async with self.http.post(self.token_url, json=body, timeout=self.timeout) as response:
                status = response.status
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LinkDropped(f"QQ access token: {type(exc).__name__}: {exc}") from None
        if status != 200 or not isinstance(answer, dict) or not answer.get("access_token"):
            raise LinkDropped(f"QQ refused the access token request (HTTP {status})")
        return str(answer["access_token"]), float(answer.get("expires_in", 7200))

    async def headers(self) -> dict[str, str]:
        """``Authorization: QQBot <token>`` and ``X-Union-Appid``."""
        return {"Authorization": f"QQBot {await self.tokens.get()}", "X-Union-Appid": self.app_id}

    async def gateway_url(self) -> str:
        """``GET /gateway/bot``'s ``url``; refuses to start without a session start left."""
        headers = await self.headers()
        try:
            async with self.http.get(f"{self.api_base}/gateway/bot", headers=headers, timeout=self.timeout) as response:
                status = response.status
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LinkDropped(f"GET /gateway/bot: {type(exc).__name__}: {exc}") from None
        if status == 401:
            self.tokens.reset()
        if status != 200 or not isinstance(answer, dict) or not answer.get("url"):
            raise LinkDropped(f"GET /gateway/bot answered HTTP {status}")
        limit = answer.get("session_start_limit") or {}
        if isinstance(limit, dict) and limit.get("remaining") == 0:
            raise LinkDropped(f"no session starts left; QQ resets them in {limit.get('reset_after')} ms")
        return str(answer["url"])

    async def reply(self, chat: ChatRef, text: str, msg_id: str, msg_seq: int) -> SendResult:
        """A text reply (msg_type 0) to message ``msg_id`` in ``chat``."""
        if chat.chat_type == "group":
            url = f"{self.api_base}/v2/groups/{chat.chat_id}/messages"
        else:
            url = f"{self.api_base}/v2/users/{chat.chat_id}/messages"
        body: dict[str, Any] = {"content": text, "msg_type": 0, "msg_seq": msg_seq}
        if msg_id:
            body["msg_id"] = msg_id
        try:
            headers = await self.headers()
            async with self.http.post(url, json=body, headers=headers, timeout=self.timeout) as response:
                status, text_answer = response.status, await response.text()
        except LinkDropped as exc:
            return Retry(str(exc))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Retry(f"QQ send failed: {type(exc).__name__}: {exc}")
        if status < 300:
            return Sent(_field(text_answer, "id"))
        code = _field(text_answer, "code")
        if code == str(DUPLICATE_SEQ):
            return Sent()  # an earlier try of this very part went through
        if status == 401:
            self.tokens.reset()
            return Retry("QQ refused the access token (HTTP 401)")
        if status == 429 or status >= 500:
            return Retry(f"QQ answered HTTP {status}")
        return Failed(f"QQ refused the reply: HTTP {status} {text_answer[:200]}")


def _field(text: str, name: str) -> str:
    try:
        answer = json.loads(text)
    except ValueError:
        return ""
    return str(answer.get(name, "")) if isinstance(answer, dict) else ""
