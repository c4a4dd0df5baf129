"""Our own protocol client (boxruntime.protocol.Peer over aiohttp), for the benches that compare
daemons of ours: the client is then the same code on every side, and only the daemon differs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from bench_harness import BenchError

from boxruntime.protocol import Peer, WebSocketConnection


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[Peer]:
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        peer = Peer(WebSocketConnection(ws), name="bench")
        reader = asyncio.create_task(peer.run())
        try:
            yield peer
        finally:
            await peer.aclose()
            await reader


async def exec_ms(peer: Peer, session_id: str) -> float:
    """One ``box_exec echo hi`` (checked), in milliseconds."""
    start = time.perf_counter()
    result = await peer.call("box_exec", {"session_id": session_id, "cmd": "echo hi"}, timeout=120)
    elapsed = (time.perf_counter() - start) * 1000
    if result.get("stdout") != "hi":
        raise BenchError(f"unexpected exec result: {result}")
    return elapsed


async def pool_of(peer: Peer) -> dict[str, Any]:
    """The daemon's ``box_status`` pool block: size, ready, hits, misses."""
    status = await peer.call("box_status", {}, timeout=30)
    pool = status.get("pool")
    if not isinstance(pool, dict):
        raise BenchError(f"the daemon reports no warm pool: {status}")
    return pool


async def pool_full(peer: Peer, timeout: float = 90.0) -> dict[str, Any]:
    """Wait until the warm pool is full (so a refill never runs during a measurement)."""
    deadline = time.monotonic() + timeout
    while (pool := await pool_of(peer))["ready"] < pool["size"]:
        if time.monotonic() > deadline:
            raise BenchError(f"the warm pool did not fill within {timeout:.0f} s: {pool}")
        await asyncio.sleep(0.05)
    return pool
