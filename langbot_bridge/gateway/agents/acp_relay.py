"""The ACP SDK's message transport over the daemon's managed-process relay: an ACP agent runs in
the chat's sandbox with its stdio on the relay, one JSON-RPC message per WebSocket text message
(the daemon turns each into a stdin line and each stdout line into one).

- A dropped link is dialled again (the agent keeps running, the daemon keeps what it writes
  meanwhile and replays it), so a prompt in flight still gets its updates and its answer. The
  daemon refusing the relay (the process or the session is gone: HTTP 400, or 401) ends it.
- Request ids are fenced, as the MCP transport does (``langbot_bridge.mcp.framing``): ours go
  out as ``"<tag>:<id>"`` and only answers carrying our tag come back. A gateway that restarted
  would otherwise take the replayed answer to its predecessor's request 0 for its own.

``async with AcpRelay(url, headers) as transport:`` in one task; ``transport`` is what
``acp.ClientSideConnection`` takes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp
import anyio
import anyio.abc

from boxruntime.protocol import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

CLOSE_REPLACED = 4000  # the daemon: another client took this relay over


class RelayEnded(Exception):
    """The relay cannot be used any more (refused, taken over, or unreachable for too long)."""


class AcpRelay:
    """A re-dialling relay link carrying ACP messages (``send``/``receive``/``close``)."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        give_up_after: float = 60.0,
        heartbeat: float = 20.0,
    ) -> None:
        self.url = url
        self.headers = dict(headers)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.give_up_after = give_up_after
        self.heartbeat = heartbeat
        self.tag = secrets.token_hex(6)
        self.links = 0
        self.ended: str | None = None
        self.dropped_replies = 0
        self._in_send, self._in_receive = anyio.create_memory_object_stream[dict[str, Any]](256)
        self._out_send, self._out_receive = anyio.create_memory_object_stream[str](0)
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> AcpRelay:
        self._stack = contextlib.AsyncExitStack()
        http = await self._stack.enter_async_context(aiohttp.ClientSession())
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._tg.start_soon(self._run, http)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._stack is not None and self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            await self._stack.aclose()
        finally:
            for stream in (self._in_send, self._in_receive, self._out_send, self._out_receive):
                stream.close()

    # ── the acp Transport ─────────────────────────────────────────────────

    async def send(self, message: dict[str, Any]) -> None:
        """Queue one message for the agent (request ids tagged)."""
        if "method" in message and "id" in message:
            message = {**message, "id": f"{self.tag}:{json.dumps(message['id'])}"}
        try:
            await self._out_send.send(json.dumps(message, ensure_ascii=False, separators=(",", ":")))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ConnectionError(self.ended or "the relay is closed") from None

    async def receive(self) -> dict[str, Any] | None:
        """The next message from the agent; None once the relay ended."""
        try:
            return await self._in_receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return None

    async def close(self) -> None:
        """Stop carrying messages (the agent process keeps running)."""
        self._out_send.close()

    # ── links ─────────────────────────────────────────────────────────────

    async def _run(self, http: aiohttp.ClientSession) -> None:
        backlog: deque[str] = deque()
        async with self._in_send:
            try:
                while True:
                    ws = await self._dial(http)
                    try:
                        if await self._pump(ws, backlog):
                            return
                    finally:
                        with anyio.CancelScope(shield=True):
                            await ws.close()
                    if ws.close_code == CLOSE_REPLACED:
                        raise RelayEnded("another client took over the agent's relay")
                    log.info("ACP relay %s dropped (code %s); dialling again", self.url, ws.close_code)
            except RelayEnded as ended:
                self.ended = str(ended)
                log.warning("ACP relay %s ended: %s", self.url, ended)

    async def _dial(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        delay = self.backoff_initial
        give_up = anyio.current_time() + self.give_up_after
        while True:
            try:
                with anyio.fail_after(10):
                    ws = await http.ws_connect(
                        self.url,
                        protocols=("mcp",),  # the relay's subprotocol: one message per line
                        headers=self.headers,
                        heartbeat=self.heartbeat,
                        max_msg_size=MAX_MESSAGE_BYTES,
                    )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (400, 401, 403):
                    raise RelayEnded(f"the daemon refused the relay (HTTP {exc.status})") from None
                reason = f"HTTP {exc.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                self.links += 1
                return ws
            if anyio.current_time() + delay > give_up:
                raise RelayEnded(f"no relay link for {self.give_up_after:g} s ({reason})")
            await anyio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse, backlog: deque[str]) -> bool:
        """Carry messages both ways until the link drops; True when our side closed."""
        finished = False
        async with anyio.create_task_group() as tg:

            async def send_all() -> None:
                nonlocal finished
                while True:
                    if not backlog:
                        try:
                            backlog.append(await self._out_receive.receive())
                        except (anyio.EndOfStream, anyio.ClosedResourceError):
                            finished = True
                            await ws.close()
                            return
                    try:
                        await ws.send_str(backlog[0])
                    except (ConnectionError, aiohttp.ClientError):
                        return  # the link died: the message waits for the next one
                    backlog.popleft()

            tg.start_soon(send_all)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    item = self._incoming(msg.data)
                    if item is not None:
                        await self._in_send.send(item)
            tg.cancel_scope.cancel()
        return finished

    def _incoming(self, text: str) -> dict[str, Any] | None:
        if not text.strip():
            return None
        try:
            message = json.loads(text)
        except ValueError:
            log.warning("ACP relay %s: a line that is not JSON: %.200s", self.url, text)
            return None
        if not isinstance(message, dict):
            return None
        if "method" not in message and "id" in message:  # an answer: ours only
            wire = message["id"]
            tag, sep, rest = wire.partition(":") if isinstance(wire, str) else ("", "", "")
            if not sep or tag != self.tag:
                self.dropped_replies += 1
                return None
            try:
                message = {**message, "id": json.loads(rest)}
            except ValueError:
                self.dropped_replies += 1
                return None
        return message
