"""RelayTransport against in-process aiohttp WebSocket servers that follow the daemon's relay
rules: framing, headers, re-dialling after a drop, and every way the transport ends. The last
test runs the real ``mcp-server-time`` behind a small line relay and drives it with the SDK's
``ClientSession``, dropping the link in the middle."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import anyio.abc
import mcp_types as types
import pytest
from aiohttp import web
from mcp import ClientSession
from mcp.shared.message import SessionMessage

from boxruntime.errors import (
    BoxAuthError,
    BoxManagedProcessConflictError,
    BoxRuntimeUnavailableError,
)
from langbot_bridge.mcp import RelayPolicy, RelayTransport

pytestmark = pytest.mark.anyio

FAST = RelayPolicy(backoff_initial=0.01, backoff_max=0.05, give_up_after=30)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """An HTTP server on a free loopback port with ``handler`` on the relay path; yields its URL."""
    app = web.Application()
    app.router.add_get("/v1/sessions/{sid}/managed-process/{pid}/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"ws://{host}:{port}/v1/sessions/s/managed-process/p/ws"
    finally:
        await runner.cleanup()


async def receive(read: Any) -> SessionMessage | Exception:
    with anyio.fail_after(30):
        item: SessionMessage | Exception = await read.receive()
    return item


def ping(request_id: int) -> SessionMessage:
    return SessionMessage(types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method="ping"))


async def test_framing_headers_and_ids_on_the_wire() -> None:
    seen: dict[str, Any] = {}

    async def relay(request: web.Request) -> web.StreamResponse:
        seen["auth"] = request.headers.get("Authorization")
        ws = web.WebSocketResponse(protocols=("mcp",))
        await ws.prepare(request)
        seen["protocol"] = ws.ws_protocol
        msg = await ws.receive()
        seen["text"] = msg.data
        wire_id = json.loads(msg.data)["id"]
        await ws.send_str("")  # a blank line: skipped
        await ws.send_str("this is not JSON-RPC")
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": wire_id, "result": {}}))
        await ws.receive()  # until the client closes
        return ws

    async with serve(relay) as url:
        transport = RelayTransport(url, {"Authorization": "Bearer tok"}, policy=FAST)
        async with transport as (read, write):
            await write.send(ping(1))
            junk = await receive(read)
            reply = await receive(read)
            assert transport.connected and transport.links == 1
    assert seen["auth"] == "Bearer tok" and seen["protocol"] == "mcp"
    assert transport.fence is not None
    assert json.loads(seen["text"]) == {"jsonrpc": "2.0", "id": f"{transport.fence.tag}:i1", "method": "ping"}
    assert isinstance(junk, Exception)
    assert isinstance(reply, SessionMessage) and reply.message == types.JSONRPCResponse(jsonrpc="2.0", id=1, result={})
    assert transport.ended is None and not transport.connected


async def test_a_dropped_link_is_dialled_again_and_the_messages_carry_on() -> None:
    sockets: list[web.WebSocketResponse] = []

    async def relay(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("mcp",))
        await ws.prepare(request)
        sockets.append(ws)
        async for msg in ws:
            wire_id = json.loads(msg.data)["id"]
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": wire_id, "result": {"link": len(sockets)}}))
            if len(sockets) == 1:
                await ws.close(code=1011)  # the first link dies after one answer
        return ws

    async with serve(relay) as url:
        transport = RelayTransport(url, policy=FAST)
        async with transport as (read, write):
            results = []
            for request_id in (1, 2, 3):
                await write.send(ping(request_id))
                reply = await receive(read)
                assert isinstance(reply, SessionMessage) and isinstance(reply.message, types.JSONRPCResponse)
                results.append((reply.message.id, reply.message.result["link"]))
    assert results == [(1, 1), (2, 2), (3, 2)]
    assert transport.links == 2 and transport.reconnects == 1 and transport.ended is None


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (
            400,
            {"error": {"code": "BoxManagedProcessConflictError", "message": "managed process p is not running"}},
            BoxManagedProcessConflictError,
            "not running",
        ),
        (400, None, BoxManagedProcessConflictError, "refused the relay"),  # a 400 without the daemon's body
        (401, None, BoxAuthError, "token"),
    ],
)
async def test_refusals_end_the_transport_with_the_typed_error(
    status: int, body: dict[str, Any] | None, error: type[Exception], text: str
) -> None:
    async def relay(request: web.Request) -> web.StreamResponse:
        if body is None:
            return web.Response(status=status, text="no")
        return web.json_response(body, status=status)

    async with serve(relay) as url:
        transport = RelayTransport(url, policy=FAST)
        async with transport as (read, _write):
            with pytest.raises(anyio.EndOfStream):
                await receive(read)
    assert isinstance(transport.ended, error) and text in str(transport.ended)
    assert transport.links == 0


async def test_a_takeover_by_another_client_ends_the_transport() -> None:
    async def relay(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("mcp",))
        await ws.prepare(request)
        await ws.close(code=4000, message=b"replaced by a newer client")
        return ws

    async with serve(relay) as url:
        transport = RelayTransport(url, policy=FAST)
        async with transport as (read, _write):
            with pytest.raises(anyio.EndOfStream):
                await receive(read)
    assert isinstance(transport.ended, BoxManagedProcessConflictError)
    assert "another client took over" in str(transport.ended) and transport.links == 1


async def test_an_unreachable_relay_is_given_up_on() -> None:
    async def nothing(request: web.Request) -> web.StreamResponse:
        return web.Response()

    async with serve(nothing) as url:
        pass  # the port is free again: nobody listens
    policy = RelayPolicy(backoff_initial=0.01, backoff_max=0.02, give_up_after=0.2)
    transport = RelayTransport(url, policy=policy)
    async with transport as (read, _write):
        with pytest.raises(anyio.EndOfStream):
            await receive(read)
    assert isinstance(transport.ended, BoxRuntimeUnavailableError) and "no relay link" in str(transport.ended)


class LineRelay:
    """The daemon's relay in miniature: one process, each stdout line one text message, output
    kept while nobody is attached and replayed on the next attach."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.current: web.WebSocketResponse | None = None
        self.replay: list[str] = []
        self.attaches = 0

    async def pump(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode()
                if self.current is not None and not self.current.closed:
                    await self.current.send_str(text)
                else:
                    self.replay.append(text)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("mcp",), max_msg_size=16 << 20)
        await ws.prepare(request)
        self.attaches += 1
        pending, self.replay = self.replay, []
        for text in pending:
            await ws.send_str(text)
        self.current = ws
        assert self.process.stdin is not None
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await self.process.stdin.send(msg.data.encode() + b"\n")
        return ws

    async def drop(self) -> None:
        ws, self.current = self.current, None
        if ws is not None:
            await ws.close(code=1001)


async def test_client_session_over_the_transport_to_a_real_server_survives_a_drop() -> None:
    argv = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]
    async with await anyio.open_process(argv) as process, anyio.create_task_group() as tg:
        relay = LineRelay(process)
        tg.start_soon(relay.pump)
        async with serve(relay.handle) as url:
            transport = RelayTransport(url, policy=FAST)
            async with transport as (read, write), ClientSession(read, write) as session:
                with anyio.fail_after(60):
                    init = await session.initialize()
                    assert init.server_info.name == "mcp-time"
                    assert {tool.name for tool in (await session.list_tools()).tools} == {
                        "get_current_time",
                        "convert_time",
                    }
                    await relay.drop()
                    result = await session.call_tool("get_current_time", {"timezone": "Europe/Berlin"})
                content = result.content[0]
                assert isinstance(content, types.TextContent)
                assert json.loads(content.text)["timezone"] == "Europe/Berlin"
            assert transport.reconnects == 1 and relay.attaches == 2
        tg.cancel_scope.cancel()
        process.kill()
