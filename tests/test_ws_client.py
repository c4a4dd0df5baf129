"""The bridge's WebSocket client: the sans-I/O framing on its own, and the client against a real
aiohttp WebSocket server (the daemon's server library) on a loopback port."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from boxruntime.protocol.ws_client import ClientWebSocket, dial
from boxruntime.protocol.ws_frames import (
    GUID,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameDecoder,
    HandshakeRefused,
    Message,
    WebSocketError,
    check_handshake,
    encode_frame,
    handshake_request,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fragments(opcode: int, payload: bytes, *sizes: int) -> bytes:
    """``payload`` as a message split into frames of ``sizes`` (the rest in the last)."""
    frames, start = [], 0
    for index, size in enumerate((*sizes, len(payload))):
        piece = payload[start : start + size] if index < len(sizes) else payload[start:]
        head_opcode = opcode if index == 0 else 0
        frame = bytearray(encode_frame(head_opcode, piece, mask=False))
        if index < len(sizes):
            frame[0] &= 0x7F  # not final
        frames.append(bytes(frame))
        start += len(piece)
    return b"".join(frames)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 1 << 20])
def test_frames_round_trip_at_every_length_encoding(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for masked in (True, False):
        decoder = FrameDecoder(max_size=2 << 20)
        assert decoder.feed(encode_frame(OP_TEXT, payload, mask=masked)) == [Message(OP_TEXT, payload)]


@given(payload=st.binary(max_size=5000), cuts=st.lists(st.integers(min_value=1, max_value=300), max_size=20))
def test_a_message_arrives_whole_however_the_bytes_are_cut(payload: bytes, cuts: list[int]) -> None:
    wire = fragments(OP_BINARY, payload, 7, 100) + encode_frame(OP_PING, b"p", mask=False)
    decoder = FrameDecoder(max_size=1 << 20)
    got: list[Message] = []
    start = 0
    for cut in cuts:
        got += decoder.feed(wire[start : start + cut])
        start += cut
    got += decoder.feed(wire[start:])
    assert got == [Message(OP_BINARY, payload), Message(OP_PING, b"p")]


def test_control_frames_may_come_between_fragments() -> None:
    wire = bytearray(fragments(OP_TEXT, b"hello world", 5))
    first_end = 2 + 5
    wire[first_end:first_end] = encode_frame(OP_PING, b"x", mask=False)
    assert FrameDecoder(100).feed(bytes(wire)) == [Message(OP_PING, b"x"), Message(OP_TEXT, b"hello world")]


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        (encode_frame(0, b"x", mask=False), "continuation frame without a message"),
        (bytes([0xC1, 0x00]), "extension bit"),
        (bytes([0x89, 126, 0, 200]) + b"x" * 200, "control frame"),
        (encode_frame(OP_TEXT, b"x" * 101, mask=False), "exceeds the limit of 100"),
        (fragments(OP_TEXT, b"x" * 101, 60), "message exceeds the limit of 100"),
        (encode_frame(0x3, b"", mask=False), "unknown data opcode"),
        (fragments(OP_TEXT, b"ab", 1)[:3] + encode_frame(OP_TEXT, b"c", mask=False), "new message began"),
    ],
)
def test_protocol_violations_are_errors(wire: bytes, problem: str) -> None:
    with pytest.raises(WebSocketError, match=problem):
        FrameDecoder(100).feed(wire)


def test_the_handshake_accepts_only_the_right_answer() -> None:
    request, key = handshake_request("example:5410", "/rpc/ws", {"Authorization": "Bearer t"})
    assert request.startswith(b"GET /rpc/ws HTTP/1.1\r\nHost: example:5410\r\n") and b"Bearer t" in request
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    check_handshake(f"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}".encode(), key)
    with pytest.raises(WebSocketError, match="does not accept"):
        check_handshake(b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: nope", key)
    with pytest.raises(HandshakeRefused) as refused:
        check_handshake(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0", key)
    assert refused.value.status == 401


# ── against aiohttp's server ────────────────────────────────────────────


async def echo(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Authorization") != "Bearer right":
        raise web.HTTPUnauthorized()
    ws = web.WebSocketResponse(max_msg_size=32 << 20, autoping=False)
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            command = json.loads(message.data)
            if command.get("do") == "ping":
                await ws.ping(b"are you there")
            elif command.get("do") == "close":
                await ws.close(code=4000, message=b"replaced")
            else:
                await ws.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.PONG:
            await ws.send_str(json.dumps({"pong": message.data.decode()}))
    return ws


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        await runner.cleanup()


async def connected(url: str) -> ClientWebSocket:
    return await dial(url, {"Authorization": "Bearer right"})


async def test_messages_both_ways_up_to_many_mebibytes(server: str) -> None:
    ws = await connected(server)
    try:
        for size in (10, 70_000, 12 << 20):  # a small one, one past LangBot 0.5's slice, a big one
            message = json.dumps({"seq_id": 1, "data": "y" * size})
            await ws.send(message)
            assert await ws.receive() == json.loads(message)
    finally:
        await ws.close()


async def test_pings_are_answered_and_a_close_ends_the_connection(server: str) -> None:
    ws = await connected(server)
    await ws.send(json.dumps({"do": "ping"}))
    assert await ws.receive() == {"pong": "are you there"}
    await ws.send(json.dumps({"do": "close"}))
    assert await ws.receive() is None
    assert ws.close_code == 4000 and ws.closed
    await ws.close()


async def test_a_refused_upgrade_says_its_status(server: str) -> None:
    with pytest.raises(HandshakeRefused) as refused:
        await dial(server, {"Authorization": "Bearer wrong"})
    assert refused.value.status == 401
    with pytest.raises(OSError):
        await dial("ws://127.0.0.1:9/ws", {})


def test_close_frames_carry_their_code() -> None:
    frame = encode_frame(OP_CLOSE, struct.pack(">H", 1000), mask=False)
    assert FrameDecoder(10).feed(frame) == [Message(OP_CLOSE, b"\x03\xe8")]
