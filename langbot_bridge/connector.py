"""The connector: one live action-RPC link to a Box daemon, kept alive.

It reaches the daemon through a target (``links``): a spawned child that dies (or hangs) is
restarted, a remote endpoint is dialled again.

Once a link is up the connector pings (``__ping``) every ``heartbeat_interval``; after
``heartbeat_misses`` failures in a row the link is dropped. A lost link is re-opened with
backoff (3 s, doubling to 60 s by default, as LangBot does). ``available`` tells callers the
state, ``unavailable_reason`` why not. Every background task lives in the connector's task
group and ends with ``close()``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from boxruntime.errors import BoxAuthError, BoxError, BoxRuntimeUnavailableError, ConnectionClosedError
from boxruntime.models import actions as a
from boxruntime.protocol import DEFAULT_TIMEOUT, Payload, Peer
from langbot_bridge.links import ChildLink, Link, SpawnTarget, Target, open_link

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Timing:
    """Every interval the connector waits on; tests shorten them, nothing else should need to."""

    heartbeat_interval: float = 20.0
    heartbeat_misses: int = 3
    ping_timeout: float = DEFAULT_TIMEOUT
    backoff_initial: float = 3.0
    backoff_max: float = 60.0
    connect_timeout: float = 30.0  # open the transport and answer the first ping
    exit_grace: float = 20.0  # a closing child removes its sandboxes; then SIGTERM, then SIGKILL
    shutdown_timeout: float = 60.0  # best-effort box_shutdown on close

    def __post_init__(self) -> None:
        if self.heartbeat_misses < 1:
            raise ValueError("heartbeat_misses must be at least 1")
        waits = (self.heartbeat_interval, self.ping_timeout, self.backoff_initial, self.connect_timeout)
        if min(waits) <= 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("intervals must be positive and backoff_max at least backoff_initial")


# ── the connector ───────────────────────────────────────────────────────


class Connector:
    """Keeps one link to a daemon open; ``call``/``call_stream`` go over whichever link is up.

    Use as an async context manager. Entering starts the connection and waits for the first
    attempt to succeed or fail (never raises for an unreachable daemon: check ``available``, or
    call ``require()`` to raise why not); leaving closes everything it started.

    ``shutdown_on_close`` sends ``box_shutdown`` before closing, which drops the daemon's
    non-persistent sessions and their files. It defaults to on for a spawned daemon (ours
    alone) and off for a remote one (other clients may share it, and sessions are meant to
    outlive a connection).

    ``reconnect=False`` makes one attempt only (a one-shot command has no use for retries).
    """

    def __init__(
        self,
        target: Target,
        *,
        timing: Timing | None = None,
        init_config: Mapping[str, Any] | None = None,
        shutdown_on_close: bool | None = None,
        reconnect: bool = True,
    ) -> None:
        self.target = target
        self.reconnect = reconnect
        self.timing = timing or Timing()
        self.init_config = dict(init_config) if init_config else None
        self.shutdown_on_close = isinstance(target, SpawnTarget) if shutdown_on_close is None else shutdown_on_close
        self._link: Link | None = None
        self._last_error: BoxError | None = None
        self._changed = anyio.Event()
        self._first_attempt = anyio.Event()
        self._closing = False
        self._stack: contextlib.AsyncExitStack | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self.connects = 0  # links that passed the handshake, over the connector's life

    # ── state ─────────────────────────────────────────────────────────────

    @property
    def available(self) -> bool:
        """A link is up and answering."""
        return self._link is not None and not self._link.peer.closed

    @property
    def last_error(self) -> BoxError | None:
        """Why the last attempt or link failed; None while a link is up."""
        return self._last_error

    @property
    def pid(self) -> int | None:
        """The spawned daemon's process id while a link to it is up."""
        link = self._link
        return link.process.pid if isinstance(link, ChildLink) else None

    def unavailable_reason(self) -> str:
        """Why no link is up, in words for a log or an error."""
        where = self.target.describe()
        if self._closing:
            return f"Box runtime ({where}) is closed"
        if self._last_error is None:
            return f"Box runtime ({where}) is not connected yet"
        return f"Box runtime ({where}) is unavailable: {self._last_error}"

    def require(self) -> None:
        """Raise unless a link is up: the auth error itself, or BoxRuntimeUnavailableError."""
        if self.available:
            return
        if isinstance(self._last_error, BoxAuthError):
            raise self._last_error
        raise BoxRuntimeUnavailableError(self.unavailable_reason())

    async def wait_available(self, timeout: float) -> None:
        """Wait for a link; on timeout raise as ``require`` does. A refused token raises at
        once: retrying the same token will not help."""
        with anyio.move_on_after(timeout):
            while not self.available and not isinstance(self._last_error, BoxAuthError):
                await self._changed.wait()
        self.require()

    async def wait_unavailable(self, timeout: float) -> bool:
        """Wait until no link is up; False if one still is after ``timeout``."""
        with anyio.move_on_after(timeout):
            while self.available:
                await self._changed.wait()
        return not self.available

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # ── calls ─────────────────────────────────────────────────────────────

    def _peer(self) -> Peer:
        link = self._link
        if link is None or link.peer.closed:
            raise BoxRuntimeUnavailableError(self.unavailable_reason())
        return link.peer

    async def call(self, action: str, data: Payload, timeout: float = DEFAULT_TIMEOUT) -> Payload:
        """``call`` over the link that is up (BoxRuntimeUnavailableError when none is)."""
        return await self._peer().call(action, data, timeout)

    async def call_stream(self, action: str, data: Payload, timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[Payload]:
        """``call_stream`` over the link that is up (BoxRuntimeUnavailableError when none is)."""
        stream = self._peer().call_stream(action, data, timeout)
        try:
            async for item in stream:
                yield item
        finally:
            # Peer.call_stream is an async generator: closing it now frees its seq id.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    # ── lifecycle ─────────────────────────────────────────────────────────

    async def __aenter__(self) -> Connector:
        if self._stack is not None:
            raise RuntimeError("a Connector can be entered only once")
        self._stack = contextlib.AsyncExitStack()
        self._task_group = await self._stack.enter_async_context(anyio.create_task_group())
        self._task_group.start_soon(self._supervise)
        await self._first_attempt.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Best-effort ``box_shutdown`` (when configured), then close the link and stop the child."""
        if self._stack is None or self._closing:
            return
        if self.shutdown_on_close and self.available:
            with anyio.move_on_after(self.timing.shutdown_timeout), contextlib.suppress(BoxError):
                await self.call(a.SHUTDOWN_SESSIONS.name, {}, timeout=self.timing.shutdown_timeout)
        self._closing = True
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        await self._stack.aclose()
        self._notify()

    async def _supervise(self) -> None:
        delay = self.timing.backoff_initial
        while True:
            reached = await self._attempt()
            self._first_attempt.set()
            if not self.reconnect:
                return
            if reached:
                delay = self.timing.backoff_initial
            log.warning("%s; reconnecting in %g s", self.unavailable_reason(), delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, self.timing.backoff_max)

    async def _attempt(self) -> bool:
        """Open one link and serve it until it is lost; True if it passed the handshake."""
        try:
            with anyio.fail_after(self.timing.connect_timeout):
                link = await open_link(self.target)
        except TimeoutError:
            self._fail(BoxRuntimeUnavailableError(f"no connection within {self.timing.connect_timeout:g} s"))
            return False
        except BoxError as exc:
            self._fail(exc)
            return False
        except Exception as exc:  # an unforeseen failure must not end the supervision
            log.exception("opening a link to %s failed", self.target.describe())
            self._fail(BoxRuntimeUnavailableError(f"cannot connect: {type(exc).__name__}: {exc}"))
            return False
        outcome = _Outcome()
        try:
            await self._serve(link, outcome)
        finally:
            self._link = None
            # Say why before anyone sees the link gone; a plain loss is described after close.
            self._fail(outcome.error or BoxRuntimeUnavailableError("the connection was lost"))
            with anyio.CancelScope(shield=True):
                await link.close(graceful=not outcome.hung, exit_grace=self.timing.exit_grace)
        if outcome.error is None:
            self._fail(BoxRuntimeUnavailableError(link.describe_loss()))
        return outcome.reached

    def _fail(self, error: BoxError) -> None:
        self._last_error = error
        self._notify()

    async def _serve(self, link: Link, outcome: _Outcome) -> None:
        """Handshake, then heartbeat until the link closes or stops answering."""
        async with anyio.create_task_group() as tg:

            async def read_until_closed() -> None:
                try:
                    await link.peer.run()
                except Exception as exc:  # a broken stream is a lost link, not a crash of ours
                    log.warning("link to %s failed: %s", self.target.describe(), exc)
                    outcome.error = BoxRuntimeUnavailableError(f"the connection failed: {exc}")
                tg.cancel_scope.cancel()  # the daemon is gone: stop handshake or heartbeat

            tg.start_soon(read_until_closed)
            try:
                await self._handshake(link.peer)
            except ConnectionClosedError:
                tg.cancel_scope.cancel()  # gone while starting: after close, say how it ended
                return
            except BoxError as exc:
                outcome.error = BoxRuntimeUnavailableError(f"handshake failed: {exc}")
                tg.cancel_scope.cancel()
                return
            outcome.reached = True
            self.connects += 1
            self._last_error = None
            self._link = link
            self._first_attempt.set()
            self._notify()
            log.info("connected to %s", self.target.describe())
            missed = await self._heartbeat(link.peer)
            if missed is not None:
                outcome.hung = True
                outcome.error = BoxRuntimeUnavailableError(missed)
            tg.cancel_scope.cancel()

    async def _handshake(self, peer: Peer) -> None:
        # The first ping waits out the daemon's start-up (backend probe, orphan cleanup).
        await peer.call(a.PING.name, {}, timeout=self.timing.connect_timeout)
        if self.init_config:
            await peer.call(a.INIT.name, self.init_config)

    async def _heartbeat(self, peer: Peer) -> str | None:
        """Ping until ``heartbeat_misses`` fail in a row (returns why) or the link closes."""
        misses = 0
        while True:
            await anyio.sleep(self.timing.heartbeat_interval)
            try:
                await peer.call(a.PING.name, {}, timeout=self.timing.ping_timeout)
                misses = 0
            except ConnectionClosedError:
                return None
            except BoxError as exc:
                misses += 1
                log.warning("heartbeat %d/%d failed: %s", misses, self.timing.heartbeat_misses, exc)
                if misses >= self.timing.heartbeat_misses:
                    return f"{misses} heartbeats in a row got no answer (last: {exc})"


@dataclass
class _Outcome:
    reached: bool = False  # the handshake passed
    hung: bool = False  # the heartbeat gave up on it: close without waiting for it
    error: BoxError | None = None  # why it ended, when known better than "closed"
