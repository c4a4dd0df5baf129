"""The async Peer: one action-RPC endpoint over a Connection, symmetric like LangBot's Handler.

It serves registered actions (each request in its own task, at most ``max_inflight`` at once),
correlates responses to its own calls by ``seq_id``, enforces caller-side timeouts, and
supports streamed responses both ways. ``run()`` owns every task it starts: when the peer
goes away, in-flight handlers are cancelled and pending calls fail with
``ConnectionClosedError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from boxruntime.errors import (
    ActionCallTimeoutError,
    BoxActionNotFoundError,
    BoxCapacityExceededError,
    BoxError,
    BoxValidationError,
    ConnectionClosedError,
    error_from_message,
)
from boxruntime.protocol.connection import Connection
from boxruntime.protocol.envelope import (
    BadRequest,
    Request,
    Response,
    classify,
    encode,
    error_message,
    failure,
    request,
    success,
)
from boxruntime.protocol.request_log import request_failed

log = logging.getLogger(__name__)

Payload = dict[str, Any]
ActionResult = Awaitable[Payload] | AsyncIterator[Payload]
ActionHandler = Callable[[Payload], ActionResult]
# Sits between a request and its handler (the daemon's tenancy gate): checks the request's
# context, may rewrite its data and the handler's answers, and calls the handler or refuses.
RequestGate = Callable[[Request, ActionHandler], ActionResult]
# Told of every request this peer answers with an error: (action name, the error). The daemon
# counts them (boxruntime.metrics).
FailureHook = Callable[[str, BaseException], None]

DEFAULT_TIMEOUT = 15.0
MAX_INFLIGHT = 128
# Answered even when the connection is busy, so a heartbeat never fails under load.
_ALWAYS_SERVED = frozenset({"__ping", "__cancel_action"})


async def call_unary(handler: ActionHandler, data: Payload) -> Payload:
    """Call a handler that answers once (not a stream) and return its answer."""
    result = handler(data)
    if not inspect.isawaitable(result):
        raise TypeError("a streaming action cannot be called for one answer")
    return await result


async def _in_scope(scope: anyio.CancelScope, coro: Coroutine[Any, Any, None]) -> None:
    with scope:
        await coro


async def _ping(_: Payload) -> Payload:
    return {}


class _PeerGone(Exception):
    """Our own connection closed while answering: nobody is left to tell.

    Distinct from a ConnectionClosedError a handler raises about some *other* connection,
    which must still be answered."""


class Peer:
    def __init__(
        self,
        connection: Connection,
        actions: Mapping[str, ActionHandler] | None = None,
        *,
        max_inflight: int = MAX_INFLIGHT,
        name: str = "peer",
        gate: RequestGate | None = None,
        on_failure: FailureHook | None = None,
    ) -> None:
        self._conn = connection
        self._on_failure = on_failure
        self._actions: dict[str, ActionHandler] = {"__ping": _ping}
        self._actions.update(actions or {})
        self._gate = gate
        # Requests being served, by seq_id: their scope, and the context they came with (a
        # cancellation must come in the same context, as LangBot 0.7 requires).
        self._scopes: dict[int, tuple[anyio.CancelScope, Payload | None]] = {}
        self._max_inflight = max_inflight
        self._inflight = 0
        self._seq = random.randint(0, 100_000)
        self._waiters: dict[int, MemoryObjectSendStream[Response]] = {}
        self._closed = anyio.Event()
        self._running = False
        self._tasks: dict[asyncio.Task[None], anyio.CancelScope] = {}
        self.name = name

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def register(self, action: str, handler: ActionHandler) -> None:
        self._actions[action] = handler

    # ── reading and dispatch ──────────────────────────────────────────────

    async def run(self) -> None:
        """Read until the peer goes away; serve its requests and route its responses."""
        self._running = True
        try:
            while True:
                obj = await self._conn.receive()
                if obj is None:
                    break
                message = classify(obj)
                if isinstance(message, Response):
                    self._route(message)
                elif isinstance(message, Request):
                    self._dispatch(message)
                elif isinstance(message, BadRequest):
                    bad = BoxValidationError(message.reason)
                    request_failed(self.name, "(malformed request)", None, bad, time.monotonic())
                    self._failed(message.action, bad)
                    self._start(self._send_error(message.seq_id, bad))
        finally:
            self._closed.set()
            for waiter in list(self._waiters.values()):
                waiter.close()
            self._waiters.clear()
            # The peer is gone: nobody can receive what in-flight handlers would answer. Handlers
            # are cancelled through their anyio scopes, never with task.cancel(): a native cancel
            # goes through the shields that keep cleanup (a sandbox half removed) from being cut.
            for scope in list(self._tasks.values()):
                scope.cancel()
            if self._tasks:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(list(self._tasks))

    def _start(self, coro: Coroutine[Any, Any, None], scope: anyio.CancelScope | None = None) -> None:
        """Run ``coro`` in a plain asyncio task (less work per request than a task group's
        start_soon), owned by run(): it cancels the task's anyio scope when the peer goes away
        and waits for the task. ``scope`` is the scope ``coro`` runs in; without one (an error
        reply) the task gets one of its own."""
        if scope is None:
            scope = anyio.CancelScope()
            coro = _in_scope(scope, coro)
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[task] = scope
        task.add_done_callback(self._tasks.pop)

    def _route(self, response: Response) -> None:
        waiter = self._waiters.get(response.seq_id)
        if waiter is None:
            log.debug("%s: response for unknown seq_id %s dropped", self.name, response.seq_id)
            return
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            waiter.send_nowait(response)

    def _dispatch(self, req: Request) -> None:
        if self._inflight >= self._max_inflight and req.action not in _ALWAYS_SERVED:
            busy = BoxCapacityExceededError(f"Runtime connection is busy (max {self._max_inflight} concurrent actions)")
            self._failed(req.action, busy)
            self._start(self._send_error(req.seq_id, busy))
            return
        self._inflight += 1
        # Made here, not in the task: a request cancelled before its task first runs is
        # cancelled as soon as it does.
        scope = anyio.CancelScope()
        self._scopes[req.seq_id] = (scope, req.context)
        self._start(self._serve(req, scope), scope)

    def _cancel_action(self, context: Payload | None) -> ActionHandler:
        """LangBot 0.7's ``__cancel_action``: stop serving one of this peer's requests that came
        in the same context as the cancellation."""

        async def cancel(data: Payload) -> Payload:
            seq_id = data.get("seq_id")
            entry = self._scopes.get(seq_id) if isinstance(seq_id, int) else None
            if entry is None or entry[1] != context:
                return {"cancelled": False}
            entry[0].cancel()
            return {"cancelled": True}

        return cancel

    def _handler(self, req: Request) -> ActionHandler:
        if req.action == "__cancel_action":
            return self._cancel_action(req.context)
        handler = self._actions.get(req.action)
        if handler is None:
            raise BoxActionNotFoundError(f"Action {req.action} not found")
        return handler

    async def _serve(self, req: Request, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await self._answer(req)
            finally:
                entry = self._scopes.get(req.seq_id)
                if entry is not None and entry[0] is scope:
                    del self._scopes[req.seq_id]
                self._inflight -= 1
        if scope.cancelled_caught and not self.closed:  # by __cancel_action: say so
            await self._send_error(req.seq_id, BoxError(f"Action {req.action} was cancelled"))

    async def _answer(self, req: Request) -> None:
        started = time.monotonic()
        try:
            handler = self._handler(req)
            result = self._gate(req, handler) if self._gate is not None else handler(req.data)
            if inspect.isasyncgen(result) or isinstance(result, AsyncIterator):
                async for chunk in result:
                    await self._send(success(req.seq_id, chunk))
                await self._send(success(req.seq_id, {}, "end"))
            else:
                assert inspect.isawaitable(result)
                await self._send(success(req.seq_id, await result))
        except _PeerGone:
            log.debug("%s: peer gone before %s was answered", self.name, req.action)
        except Exception as exc:
            request_failed(self.name, req.action, req.data, exc, started)  # one line per failure
            self._failed(req.action, exc)
            await self._send_error(req.seq_id, exc)

    def _failed(self, action: str, exc: BaseException) -> None:
        if self._on_failure is not None:
            self._on_failure(action, exc)

    async def _send_error(self, seq_id: int, exc: BaseException) -> None:
        with contextlib.suppress(_PeerGone):
            await self._send(failure(seq_id, error_message(exc)))

    async def _send(self, message: Payload) -> None:
        try:
            try:
                await self._conn.send(encode(message))
            except ValueError as exc:  # too large for the wire: say so instead of going silent
                if message.get("code") != 0:
                    raise
                await self._conn.send(encode(failure(message["seq_id"], error_message(BoxError(str(exc))))))
        except ConnectionClosedError as exc:
            raise _PeerGone(str(exc)) from exc

    # ── calling the other side ────────────────────────────────────────────

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _open_call(
        self,
    ) -> tuple[int, MemoryObjectSendStream[Response], MemoryObjectReceiveStream[Response]]:
        if self.closed:
            raise ConnectionClosedError(f"{self.name}: connection is closed")
        self._next_seq()
        send, receive = anyio.create_memory_object_stream[Response](math.inf)
        self._waiters[self._seq] = send
        return self._seq, send, receive

    def _close_call(
        self,
        seq_id: int,
        send: MemoryObjectSendStream[Response],
        receive: MemoryObjectReceiveStream[Response],
    ) -> None:
        self._waiters.pop(seq_id, None)
        send.close()
        receive.close()

    async def call(
        self, action: str, data: Payload, timeout: float = DEFAULT_TIMEOUT, context: Payload | None = None
    ) -> Payload:
        seq_id, send, receive = self._open_call()
        try:
            await self._conn.send(encode(request(seq_id, action, data, context)))
            with anyio.fail_after(timeout):
                response = await receive.receive()
        except TimeoutError:
            raise ActionCallTimeoutError(f"Action {action} call timed out after {timeout:g} s") from None
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise ConnectionClosedError(f"connection closed while calling {action}") from None
        finally:
            self._close_call(seq_id, send, receive)
        if response.code != 0:
            raise error_from_message(response.message)
        return response.data

    async def call_stream(
        self, action: str, data: Payload, timeout: float = DEFAULT_TIMEOUT, context: Payload | None = None
    ) -> AsyncIterator[Payload]:
        """Yield each streamed chunk; ``timeout`` bounds the wait for every next message."""
        seq_id, send, receive = self._open_call()
        finished = False
        try:
            await self._conn.send(encode(request(seq_id, action, data, context)))
            while True:
                with anyio.fail_after(timeout):
                    response = await receive.receive()
                if response.code != 0:
                    finished = True
                    raise error_from_message(response.message)
                if response.chunk_status == "end":
                    finished = True
                    return
                yield response.data
        except TimeoutError:
            raise ActionCallTimeoutError(f"Action {action} stream stalled for {timeout:g} s") from None
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            finished = True
            raise ConnectionClosedError(f"connection closed while streaming {action}") from None
        finally:
            self._close_call(seq_id, send, receive)
            if not finished and not self.closed:
                # The caller stopped reading: ask the other side to stop producing.
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    with anyio.fail_after(5):
                        cancel = request(self._next_seq(), "__cancel_action", {"seq_id": seq_id}, context)
                        await self._conn.send(encode(cancel))

    async def aclose(self) -> None:
        await self._conn.close()
