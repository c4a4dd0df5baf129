"""A directory watched by a sandbox's agent (inotify inside the sandbox): its events as they
come. Everything the agent sends is checked, since it runs inside the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, get_args

from boxruntime.backends.agent.sandbox import boxagent_wire as wire
from boxruntime.backends.contract import FileChange, WatchKind
from boxruntime.errors import BoxSandboxError

# The contract's typed kinds are the wire's names (a test holds the two equal: a Literal cannot
# be built from the wire's names).
WATCH_KINDS: frozenset[str] = frozenset(get_args(WatchKind))


def parse_events(header: dict[str, Any]) -> list[FileChange]:
    raw = header.get(wire.FsEvent.EVENTS)
    if not isinstance(raw, list):
        raise ValueError("agent watch events are not a list")
    events = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and item[1] in WATCH_KINDS):
            raise ValueError("agent watch event malformed")
        events.append(FileChange(item[0], item[1]))
    return events


class AgentWatch:
    """Batches of events, in order, until closed or the agent connection is lost."""

    def __init__(self, watch_id: str, stop: Callable[[str], None]) -> None:
        self.id = watch_id
        self._stop = stop
        self._queue: asyncio.Queue[list[FileChange] | BaseException] = asyncio.Queue()
        self.closed = False

    def _deliver(self, batch: list[FileChange] | BaseException) -> None:
        self._queue.put_nowait(batch)

    async def next_batch(self) -> list[FileChange]:
        """The next events (waiting for them; cancelling the wait loses nothing)."""
        batch = await self._queue.get()
        if isinstance(batch, BaseException):
            self._queue.put_nowait(batch)  # the watch stays broken for whoever asks next
            raise batch
        return batch

    def pending(self) -> list[FileChange]:
        """Every event received so far and not yet taken (without waiting)."""
        events: list[FileChange] = []
        while not self._queue.empty():
            batch = self._queue.get_nowait()
            if isinstance(batch, BaseException):
                self._queue.put_nowait(batch)
                raise batch
            events.extend(batch)
        return events

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # A lost connection needs no unwatch: the agent ended the watch with it.
            with contextlib.suppress(BoxSandboxError):
                self._stop(self.id)
