"""Delivering the outbox: per chat, in order, with retries.

One lane per chat sends that chat's pending messages oldest first; the next one waits until
the current one is sent or given up (dead letter), so replies never overtake each other.
A failure the platform may get over (``Retry``: 5xx, 429, network) is tried again after an
exponential backoff with jitter, or after the platform's own Retry-After; ``Failed`` (a
permanent refusal) and the last allowed attempt make a dead letter. ``Offline`` (a client
channel with nobody connected) waits for the channel to come back without using an attempt:
the "flush on reconnect".
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from langbot_bridge.gateway.channel import Channel, Delivery
from langbot_bridge.gateway.diagnostics import Counters
from langbot_bridge.gateway.lanes import ChatQueues, Lane, Lanes
from langbot_bridge.gateway.messages import Failed, Offline, Retry, SendResult, Sent
from langbot_bridge.gateway.store import OutboxRow, Store

log = logging.getLogger(__name__)

OFFLINE_RECHECK_SEC = 5.0


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float
    maximum: float
    jitter: float

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Wait after failed attempt ``attempt`` (1-based): doubling from ``initial`` up to
        ``maximum``, stretched by up to ``jitter`` so retries of many chats spread out."""
        base: float = min(self.initial * 2.0 ** max(0, attempt - 1), self.maximum)
        return base * (1 + self.jitter * rng())


class ReadySignals:
    """One event per channel, set (and replaced) each time the channel can deliver again."""

    def __init__(self) -> None:
        self._events: dict[str, anyio.Event] = {}

    def event(self, channel: str) -> anyio.Event:
        return self._events.setdefault(channel, anyio.Event())

    def fire(self, channel: str) -> None:
        self._events.pop(channel, anyio.Event()).set()


class Dispatcher:
    def __init__(
        self,
        store: Store,
        channels: Mapping[str, Channel[Any]],
        counters: Counters,
        *,
        max_attempts: int,
        backoff: Backoff,
        max_concurrent_sends: int,
        public_url: str | None,
    ) -> None:
        self.store = store
        self.channels = channels
        self.counters = counters
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.public_url = public_url
        self.ready = ReadySignals()
        self.queues: ChatQueues[OutboxRow] = ChatQueues(lambda row: row.id)
        self.lanes: Lanes | None = None  # set by the gateway once its task group runs
        self._sends = anyio.CapacityLimiter(max_concurrent_sends)

    def attempts_allowed(self, channel: Channel[Any]) -> int:
        return channel.settings.max_attempts or self.max_attempts

    def enqueue(self, rows: list[OutboxRow], *, first: bool = False) -> None:
        """Queue stored rows on their chats' lanes (``first``: ahead of the rest, for a message
        the platform reported lost after later ones went out)."""
        assert self.lanes is not None, "the dispatcher's lanes are not running"
        for row in rows:
            if first:
                self.queues.push_front(row.chat_key, row)
            else:
                self.queues.push(row.chat_key, row)
            self.lanes.kick(row.chat_key)

    def busy(self, chat_key: str) -> bool:
        return self.lanes is not None and self.lanes.busy(chat_key)

    def waiting_chats(self, channel: str) -> list[str]:
        return [key for key in self.queues.chats() if key.split("\x1f", 1)[0] == channel]

    async def drain(self, lane: Lane) -> None:
        """The lane's work: send the chat's queued messages in order until none is left; a
        message leaves the queue once it is sent or dead."""
        queue = self.queues.queue(lane.key)
        while queue:
            await self._deliver(queue[0])
            self.queues.pop_first(lane.key)
        self.queues.release(lane.key)

    async def _deliver(self, row: OutboxRow) -> None:
        channel = self.channels.get(row.channel)
        if channel is None:
            await self.store.mark_dead(row.id, row.attempts, f"channel {row.channel!r} is no longer configured")
            return
        attempts = row.attempts
        limit = self.attempts_allowed(channel)
        if row.next_at > time.time():  # a retry planned before a restart
            await anyio.sleep(row.next_at - time.time())
        while True:
            if not channel.ready:
                await self._wait_ready(channel)
                continue
            result = await self._send(channel, row, attempts + 1)
            if isinstance(result, Offline):
                self.counters.add(row.channel, "send_offline")
                # Normally the channel is not ready now and the check above waits; a channel that
                # still says ready is asked again after a pause, never in a busy loop.
                with anyio.move_on_after(OFFLINE_RECHECK_SEC):
                    await self.ready.event(channel.name).wait()
                continue
            if isinstance(result, Sent):
                await self.store.mark_sent(row.id, attempts + 1, result.platform_id, result.confirmed)
                self.counters.add(row.channel, "sent")
                return
            attempts += 1
            if isinstance(result, Failed) or attempts >= limit:
                why = result.error if isinstance(result, Failed) else f"{result.error} (after {attempts} attempts)"
                log.warning("outbox message %d to %s is a dead letter: %s", row.id, row.channel, why)
                await self.store.mark_dead(row.id, attempts, why)
                self.counters.add(row.channel, "dead_letters")
                return
            delay = result.after if result.after is not None else self.backoff.delay(attempts)
            self.counters.add(row.channel, "send_retries")
            log.info("outbox message %d to %s: %s; retrying in %.1f s", row.id, row.channel, result.error, delay)
            await self.store.mark_retry(row.id, attempts, time.time() + delay, result.error)
            await anyio.sleep(delay)

    async def _send(self, channel: Channel[Any], row: OutboxRow, attempt: int) -> SendResult:
        outbound = row.outbound
        file_url = None
        if outbound.file is not None and self.public_url:
            file_url = f"{self.public_url}/files/{outbound.file.token}"

        async def read_file() -> bytes:
            return await self.store.outbox_file(row.id)

        delivery = Delivery(row.id, outbound, attempt, file_url, read_file)
        try:
            async with self._sends:
                return await channel.send(delivery)
        except Exception as exc:  # a channel bug must not stop the chat's lane; retried like a network error
            log.exception("channel %s failed to send outbox message %d", row.channel, row.id)
            return Retry(f"{type(exc).__name__}: {exc}")

    async def _wait_ready(self, channel: Channel[Any]) -> None:
        event = self.ready.event(channel.name)
        if not channel.ready:
            await event.wait()
