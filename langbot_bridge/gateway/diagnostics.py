"""Counters for the diagnostics endpoint: per channel, how many messages were accepted,
recognised as duplicates, rejected (by reason), sent, retried, dead-lettered ...; and timings
(inbound requests inside the gateway, the store's commit before an ack), over the last 1,000 of
each. Only counts, names and times: no message content, no secrets."""

from __future__ import annotations

import collections
import time
from typing import Any

TIMING_WINDOW = 1000


class Counters:
    def __init__(self) -> None:
        self.started = time.time()
        self._counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._timings: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=TIMING_WINDOW)
        )
        self.last_errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)

    def add(self, channel: str, event: str, amount: int = 1) -> None:
        self._counts[channel][event] += amount

    def get(self, channel: str, event: str) -> int:
        return self._counts[channel][event]

    def time(self, name: str, ms: float) -> None:
        self._timings[name].append(ms)

    def error(self, where: str, message: str) -> None:
        self.last_errors.append({"at": round(time.time(), 3), "where": where, "error": message[:500]})

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {channel: dict(sorted(counts.items())) for channel, counts in sorted(self._counts.items())}

    def timings(self) -> dict[str, dict[str, float | int | None]]:
        """Per timing: p50, p99 and max of the last 1,000, in ms."""
        result: dict[str, dict[str, float | int | None]] = {}
        for name, window in sorted(self._timings.items()):
            times = sorted(window)

            def at(q: float, times: list[float] = times) -> float | None:
                return round(times[min(len(times) - 1, int(q * len(times)))], 3) if times else None

            result[name] = {"n": len(times), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)}
        return result
