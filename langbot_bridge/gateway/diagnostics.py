"""Counters for the diagnostics endpoint: per channel, how many messages were accepted,
recognised as duplicates, rejected (by reason), sent, retried, dead-lettered ... Only counts and
names: no message content, no secrets."""

from __future__ import annotations

import collections
import time
from typing import Any


class Counters:
    def __init__(self) -> None:
        self.started = time.time()
        # How long inbound requests took inside the gateway (the platform's ack waits on this).
        self.request_ms: collections.deque[float] = collections.deque(maxlen=1000)  # the last 1,000
        self._counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.last_errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)

    def add(self, channel: str, event: str, amount: int = 1) -> None:
        self._counts[channel][event] += amount

    def get(self, channel: str, event: str) -> int:
        return self._counts[channel][event]

    def error(self, where: str, message: str) -> None:
        self.last_errors.append({"at": round(time.time(), 3), "where": where, "error": message[:500]})

    def request_times(self) -> dict[str, float | int | None]:
        """Percentiles of the last requests' times inside the gateway, in ms."""
        times = sorted(self.request_ms)

        def at(q: float) -> float | None:
            return round(times[min(len(times) - 1, int(q * len(times)))], 3) if times else None

        return {"n": len(times), "p50": at(0.50), "p99": at(0.99), "max": times[-1] if times else None}

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {channel: dict(sorted(counts.items())) for channel, counts in sorted(self._counts.items())}
