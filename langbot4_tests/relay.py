"""The managed-process relay as LangBot 4.11.2 reaches it: its URL (built by the 0.7.16 client from
the logical id), its headers, its MCP transport (``authenticated_websocket_client`` from
``langbot/pkg/provider/tools/loaders/mcp_stdio.py``) under the ``mcp`` SDK's ``ClientSession``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from langbot.pkg.provider.tools.loaders.mcp_stdio import authenticated_websocket_client
from mcp import ClientSession
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

MCP = Subprotocol("mcp")


def connect_relay(url: str, headers: dict[str, str]) -> connect:
    """A raw relay websocket, opened as LangBot opens it (subprotocol ``mcp``, no proxy)."""
    return connect(url, subprotocols=[MCP], additional_headers=headers, proxy=None)


async def upgrade_status(url: str, headers: dict[str, str]) -> int:
    """The HTTP status of a relay upgrade: 101 when it is accepted."""
    try:
        async with connect_relay(url, headers):
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


@contextlib.asynccontextmanager
async def mcp_session(url: str, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    """LangBot's MCP transport over the relay and the SDK's ClientSession on it, initialized."""
    async with (
        authenticated_websocket_client(url, headers) as (read_stream, write_stream),
        ClientSession(read_stream, write_stream) as session,
    ):
        with anyio.fail_after(60):  # a cold python3 in a sandbox imports mcp first
            await session.initialize()
        yield session


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Poll state that offers nothing to wait on (another process's sessions)."""
    with anyio.fail_after(timeout):
        while not await predicate():  # noqa: ASYNC110 - another process's state offers no event
            await anyio.sleep(0.1)
