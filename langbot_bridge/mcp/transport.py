"""An MCP client transport over the daemon's managed-process relay, dialled again when it drops.

The SDK's ``ClientSession`` reads and writes a pair of memory streams; this transport carries
them over one relay WebSocket at a time (subprotocol ``mcp``, framing in ``framing.py``).
When the socket drops (network, a proxy, a missed heartbeat) the server process keeps
running and the daemon keeps what it writes meanwhile, so the transport dials again and
carries on: the session on top sees no break, and requests in flight get their replies from
the daemon's replay.

It stops for good only where dialling again cannot help: the daemon refuses the relay (HTTP
400: the process or session is gone; the typed error from the daemon's answer says which),
refuses the token (401), another client takes the relay over (close code 4000), or no link
could be made for ``give_up_after`` seconds. Then the read stream ends, the session fails
its pending requests as "connection closed", and ``ended`` says why.

Delivery: a message whose send had not completed when a link died is sent again on the next
link. One that was sent on a link that then died may be lost (the daemon may never have read
it); its request ends by the caller's timeout, since sending it twice could run a tool twice.

Enter and leave it in the same task, as any anyio context manager.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

import aiohttp
import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage

from boxruntime.errors import (
    BoxAuthError,
    BoxError,
    BoxManagedProcessConflictError,
    BoxRuntimeUnavailableError,
    error_from_message,
)
from boxruntime.protocol import MAX_MESSAGE_BYTES
from langbot_bridge.mcp.framing import RequestIdFence, decode, encode

log = logging.getLogger(__name__)

CLOSE_REPLACED = 4000  # the daemon's close code for "a newer client took this relay over"


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    connect_timeout: float = 10.0  # one dial: TCP, HTTP upgrade
    heartbeat: float = 20.0  # our pings; a link that stops answering is dropped and re-dialled
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    give_up_after: float = 120.0  # seconds of failed dials in a row before the transport ends
    fence_ids: bool = True  # tag request ids (framing.RequestIdFence); off only for broken servers

    def __post_init__(self) -> None:
        waits = (self.connect_timeout, self.heartbeat, self.backoff_initial, self.give_up_after)
        if min(waits) <= 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("relay intervals must be positive and backoff_max at least backoff_initial")


class _Ended(Exception):
    def __init__(self, error: BoxError) -> None:
        self.error = error


def http_url(url: str) -> str:
    """The plain HTTP URL of a ws(s):// URL (for reading the daemon's refusal)."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urllib.parse.urlunsplit((scheme, *parts[1:]))


class RelayTransport:
    """``async with RelayTransport(url, headers) as (read, write): ClientSession(read, write)``."""

    def __init__(
        self, url: str, headers: Mapping[str, str] | None = None, *, policy: RelayPolicy | None = None
    ) -> None:
        self.url = url
        self.policy = policy or RelayPolicy()
        self.fence = RequestIdFence() if self.policy.fence_ids else None
        self.links = 0  # relay sockets opened over the transport's life
        self.ended: BoxError | None = None  # why it stopped, when the daemon or the network decided
        self._headers = dict(headers or {})
        self._connected = False
        self._stack: contextlib.AsyncExitStack | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closers: list[Callable[[], None]] = []  # the four memory streams' close()

    @property
    def connected(self) -> bool:
        """A relay WebSocket is open right now."""
        return self._connected

    @property
    def reconnects(self) -> int:
        """How many times the relay was dialled again after the first link."""
        return max(0, self.links - 1)

    # ── lifecycle ─────────────────────────────────────────────────────────

    async def __aenter__(self) -> TransportStreams:
        if self._stack is not None:
            raise RuntimeError("a RelayTransport can be entered only once")
        read_send, read_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_send, write_receive = anyio.create_memory_object_stream[SessionMessage](0)
        self._closers = [read_send.close, read_receive.close, write_send.close, write_receive.close]
        self._stack = contextlib.AsyncExitStack()
        try:
            http = await self._stack.enter_async_context(aiohttp.ClientSession())
            self._task_group = await self._stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            await self._stack.aclose()
            raise
        self._task_group.start_soon(self._run, http, read_send, write_receive)
        return read_receive, write_send

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._stack is not None and self._task_group is not None
        self._task_group.cancel_scope.cancel()
        try:
            await self._stack.aclose()  # the task group first (cancelled), then the HTTP session
        finally:
            for close in self._closers:
                close()

    # ── the link loop ─────────────────────────────────────────────────────

    async def _run(
        self,
        http: aiohttp.ClientSession,
        read_send: MemoryObjectSendStream[SessionMessage | Exception],
        write_receive: MemoryObjectReceiveStream[SessionMessage],
    ) -> None:
        backlog: deque[str] = deque()  # taken from the session, not yet sent
        async with read_send:  # closing it is the session's end of stream
            try:
                while True:
                    ws = await self._dial(http)
                    self._connected = True
                    try:
                        if await self._pump(ws, read_send, write_receive, backlog):
                            return  # the session is done with us
                    finally:
                        self._connected = False
                        with anyio.CancelScope(shield=True):
                            await ws.close()
                    if ws.close_code == CLOSE_REPLACED:
                        raise _Ended(
                            BoxManagedProcessConflictError(
                                f"another client took over the relay at {self.url}; this one stops "
                                "(two clients for one MCP server would steal each other's replies)"
                            )
                        )
                    log.info("relay %s dropped (close code %s); dialling again", self.url, ws.close_code)
            except _Ended as ended:
                self.ended = ended.error
                log.warning("relay %s ended: %s", self.url, ended.error)

    async def _dial(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        policy = self.policy
        delay = policy.backoff_initial
        give_up = anyio.current_time() + policy.give_up_after
        while True:
            try:
                with anyio.fail_after(policy.connect_timeout):
                    ws = await http.ws_connect(
                        self.url,
                        protocols=("mcp",),
                        headers=self._headers,
                        heartbeat=policy.heartbeat,
                        max_msg_size=MAX_MESSAGE_BYTES,
                    )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 400:
                    raise _Ended(await self._refusal(http)) from None
                if exc.status in (401, 403):
                    raise _Ended(BoxAuthError(f"the daemon refused the relay token at {self.url} (HTTP 401)")) from None
                reason = f"HTTP {exc.status} {exc.message}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                self.links += 1
                return ws
            if anyio.current_time() + delay > give_up:
                raise _Ended(
                    BoxRuntimeUnavailableError(
                        f"no relay link to {self.url} for {policy.give_up_after:g} s (last attempt: {reason})"
                    )
                )
            log.debug("relay %s not reachable (%s); next attempt in %g s", self.url, reason, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, policy.backoff_max)

    async def _refusal(self, http: aiohttp.ClientSession) -> BoxError:
        """The daemon's reason for a 400 (its JSON body), as the typed error it names."""
        try:
            with anyio.fail_after(self.policy.connect_timeout):
                async with http.get(http_url(self.url), headers=self._headers) as response:
                    error = (await response.json())["error"]
            return error_from_message(f"{error['code']}: {error['message']}")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError):
            return BoxManagedProcessConflictError(f"the daemon refused the relay at {self.url} (HTTP 400)")

    async def _pump(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        read_send: MemoryObjectSendStream[SessionMessage | Exception],
        write_receive: MemoryObjectReceiveStream[SessionMessage],
        backlog: deque[str],
    ) -> bool:
        """Carry messages both ways until the socket closes; True when the session is done."""
        finished = False
        async with anyio.create_task_group() as tg:

            async def send_all() -> None:
                nonlocal finished
                finished = await self._send(ws, write_receive, backlog)
                await ws.close()  # ends the receive loop below

            tg.start_soon(send_all)
            try:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        item = self._inbound(msg.data)
                        if item is not None:
                            await read_send.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                finished = True  # the session stopped reading
            tg.cancel_scope.cancel()
        return finished

    async def _send(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        write_receive: MemoryObjectReceiveStream[SessionMessage],
        backlog: deque[str],
    ) -> bool:
        """Send the backlog, then what the session writes; True when the session closed its side."""
        while True:
            if not backlog:
                try:
                    message = await write_receive.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return True
                backlog.append(self._outbound(message))
            try:
                await ws.send_str(backlog[0])
            except (ConnectionError, aiohttp.ClientError):
                return False  # the link died under it: the message waits for the next link
            backlog.popleft()  # only now: a send cut short by cancellation is sent again

    def _outbound(self, message: SessionMessage) -> str:
        if self.fence is not None:
            message = SessionMessage(self.fence.outgoing(message.message), message.metadata)
        return encode(message)

    def _inbound(self, text: str) -> SessionMessage | Exception | None:
        item = decode(text)
        if isinstance(item, SessionMessage) and self.fence is not None:
            fenced = self.fence.incoming(item.message)
            if fenced is None:
                log.info("relay %s: dropped a reply meant for another client", self.url)
                return None
            item = SessionMessage(fenced)
        elif isinstance(item, Exception):
            log.warning("relay %s: a line that is not JSON-RPC: %s", self.url, item)
        return item
