"""A client-side request limit: at most ``limit`` requests in any ``window`` seconds.

A request holds its slot from the moment it starts until ``window`` after its response, so
the server, which counts arrivals, sees at most ``limit`` requests in any window however long
each one took. Waiters are served first come, first served (a chat's order is kept). A 429 from
the server (``pause``) holds every new request until the time it names.

``clock`` and ``sleep`` are injectable so the logic can be checked without waiting.
"""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio


class SlidingWindowLimit:
    def __init__(
        self,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be at least 1 and window positive")
        self.limit = limit
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self._releases: collections.deque[float] = collections.deque()  # when finished slots free up
        self._in_flight = 0
        self._paused_until = 0.0
        self._queue = anyio.Lock()  # fair: waiters are served in arrival order
        self._finished = anyio.Event()
        self.waited = 0  # requests that had to wait, for diagnostics

    def pause(self, until: float) -> None:
        """Hold new requests until ``until`` (clock time), e.g. after a 429."""
        self._paused_until = max(self._paused_until, until)

    def _free(self, now: float) -> None:
        while self._releases and self._releases[0] <= now:
            self._releases.popleft()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._queue:
            waited = False
            while True:
                now = self.clock()
                self._free(now)
                if now < self._paused_until:
                    waited = True
                    await self.sleep(self._paused_until - now)
                    continue
                if len(self._releases) + self._in_flight < self.limit:
                    break
                waited = True
                if self._releases:
                    await self.sleep(self._releases[0] - now)
                else:  # every slot is held by a request still in flight: wait for one to end
                    await self._finished.wait()
            self.waited += waited
            self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._releases.append(self.clock() + self.window)
            self._finished.set()
            self._finished = anyio.Event()
