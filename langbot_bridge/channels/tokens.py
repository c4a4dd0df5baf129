"""An access token cache for platform APIs (DingTalk's ``accessToken``, QQ's ``access_token``,
WeCom's ``gettoken``): fetched once when first needed, shared by concurrent sends, renewed a
while before it expires or at once after the platform refused it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

RENEW_MARGIN_SEC = 300.0  # the SDKs' 5 minutes of slack before expiry


class TokenCache:
    """``await get()``: a valid token; ``reset()`` after the platform said it is not."""

    def __init__(self, fetch: Callable[[], Awaitable[tuple[str, float]]], margin: float = RENEW_MARGIN_SEC) -> None:
        self._fetch = fetch  # returns (token, seconds it is valid)
        self._margin = margin
        self._token: str | None = None
        self._expires = 0.0
        self._lock = anyio.Lock()
        self.fetches = 0

    async def get(self) -> str:
        """The cached token, fetched again when missing or about to expire."""
        async with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                token, valid_for = await self._fetch()
                self.fetches += 1
                self._token = token
                self._expires = time.monotonic() + max(valid_for - self._margin, valid_for / 2)
            return self._token

    def reset(self) -> None:
        """Forget the token (the platform refused it): the next ``get`` fetches a new one."""
        self._token = None
