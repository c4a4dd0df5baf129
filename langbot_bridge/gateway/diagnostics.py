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
        self._counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.last_errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)

    def add(self, channel: str, event: str, amount: int = 1) -> None:
        self._counts[channel][event] += amount

    def get(self, channel: str, event: str) -> int:
        return self._counts[channel][event]

    def error(self, where: str, message: str) -> None:
        self.last_errors.append({"at": round(time.time(), 3), "where": where, "error": message[:500]})

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {channel: dict(sorted(counts.items())) for channel, counts in sorted(self._counts.items())}
