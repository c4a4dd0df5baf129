"""Keyed lanes: at most one worker per key (a chat), so one chat's work runs in order while
different chats run in parallel.

``kick(key)`` says "there may be work for this key": it starts the key's worker in the owner's
task group, or tells a running one to look again before it stops. A worker stops when it finds
nothing left, so an idle chat costs nothing. A worker that fails is logged and looks again
after a pause: a bug or a database hiccup delays a chat, it does not take the gateway down.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import anyio.abc

log = logging.getLogger(__name__)
T = TypeVar("T")


class Lane:
    """The state of one running worker."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.again = False
        self._wake = anyio.Event()

    def poke(self) -> None:
        self.again = True
        self._wake.set()

    async def nap(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a kick ends the nap early."""
        with anyio.move_on_after(max(0.0, seconds)):
            await self._wake.wait()
        self._wake = anyio.Event()


class Lanes:
    def __init__(
        self,
        name: str,
        task_group: anyio.abc.TaskGroup,
        work: Callable[[Lane], Awaitable[None]],
        *,
        error_pause: float = 2.0,
    ) -> None:
        self.name = name
        self.task_group = task_group
        self.work = work
        self.error_pause = error_pause
        self._running: dict[str, Lane] = {}
        self.failures = 0

    def kick(self, key: str) -> None:
        lane = self._running.get(key)
        if lane is not None:
            lane.poke()
            return
        lane = Lane(key)
        self._running[key] = lane
        self.task_group.start_soon(self._run, lane, name=f"{self.name} {key!r}")

    def busy(self, key: str) -> bool:
        return key in self._running

    def __len__(self) -> int:
        return len(self._running)

    async def _run(self, lane: Lane) -> None:
        try:
            while True:
                lane.again = False
                try:
                    await self.work(lane)
                except Exception:
                    self.failures += 1
                    log.exception("%s worker for %r failed; again in %g s", self.name, lane.key, self.error_pause)
                    await anyio.sleep(self.error_pause)
                    lane.again = True
                if not lane.again:
                    return
        finally:
            self._running.pop(lane.key, None)


class ChatQueues(Generic[T]):
    """Work waiting per chat, in memory, in order: what a lane takes from. The store is the
    durable copy; these hold what was stored while the gateway runs (and, after a restart,
    what the store still had pending)."""

    def __init__(self, ident: Callable[[T], int]) -> None:
        self._queues: dict[str, collections.deque[T]] = {}
        self._ident = ident
        self._queued: set[int] = set()  # an item is never queued twice (its row would be done twice)

    def push(self, key: str, item: T) -> None:
        if self._admit(item):
            self._queues.setdefault(key, collections.deque()).append(item)

    def push_front(self, key: str, item: T) -> None:
        if self._admit(item):
            self._queues.setdefault(key, collections.deque()).appendleft(item)

    def _admit(self, item: T) -> bool:
        ident = self._ident(item)
        if ident in self._queued:
            log.warning("work item %d is already queued; not queueing it again", ident)
            return False
        self._queued.add(ident)
        return True

    def pop_first(self, key: str) -> None:
        """The chat's first item is done: take it off."""
        self._queued.discard(self._ident(self._queues[key].popleft()))

    def queue(self, key: str) -> collections.deque[T]:
        """The chat's queue (the same object while it has work: pushes during a drain land in it)."""
        return self._queues.setdefault(key, collections.deque())

    def release(self, key: str) -> None:
        """Forget the chat's queue once it is empty (an idle chat costs nothing)."""
        if not self._queues.get(key):
            self._queues.pop(key, None)

    def chats(self) -> list[str]:
        return list(self._queues)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())
