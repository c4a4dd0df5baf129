"""What webhook channels share: reading a body with a size cap, HMAC signatures compared in
constant time, and the shape of a refusal."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from aiohttp import web

from langbot_bridge.gateway.channel import Rejected


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refused with 413 once it is larger than ``limit`` (announced or not)."""
    if request.content_length is not None and request.content_length > limit:
        raise Rejected("too_large", 413, f"body of {request.content_length} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise Rejected("too_large", 413, f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def refusal(error: Rejected, body: dict[str, Any]) -> web.Response:
    """The JSON answer to a refused request. After a body that was too large the connection is
    closed: the rest of that body is never read, so the socket cannot serve another request."""
    response = web.json_response(body, status=error.status)
    if error.reason == "too_large":
        response.force_close()
    return response


def hmac_sha256_hex(secret: str, data: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of ``data`` keyed with the UTF-8 ``secret`` (WorkBot's
    ``X-Signature``, and the digest inside the HTTP bot's ``sha256=`` signature)."""
    return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()


def same(given: str, expected: str) -> bool:
    """Constant-time comparison of two ASCII strings (signatures, tokens)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))
