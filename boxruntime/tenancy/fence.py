"""The generation fence (reference §A.9): per LangBot workspace, the highest placement generation
seen. A request of an older generation is refused; a newer one retires the older generations:
their sessions are deleted, their requests in flight cancelled, their relays closed.

One fence per daemon, shared by every control connection and the relay. It holds no task of its
own: requests register the cancel scope they run in, relays wait on an event.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator

import anyio

from boxruntime.errors import BoxPermissionError
from boxruntime.tenancy.placement import Placement, Workspace

STALE_MESSAGE = "Stale Box placement generation"
DEFAULT_MAX_RECORDS = 100_000


class GenerationFence:
    def __init__(self, max_records: Callable[[], int] = lambda: DEFAULT_MAX_RECORDS) -> None:
        self._max_records = max_records
        self._current: dict[Workspace, int] = {}
        # Requests in flight per placement: cancelled when a newer generation arrives.
        self._active: dict[Placement, set[anyio.CancelScope]] = {}
        # Set when a placement goes stale; relays of that placement wait on it.
        self._stale: dict[Placement, anyio.Event] = {}

    def current(self, workspace: Workspace) -> int | None:
        return self._current.get(workspace)

    def observe(self, placement: Placement) -> bool:
        """Record a placement's generation; True when it advanced the workspace's fence.

        No await in here: an observation is atomic on the event loop.
        """
        workspace, generation = placement.workspace, placement.generation
        current = self._current.get(workspace)
        if current is None and len(self._current) >= self._max_records():
            raise BoxPermissionError(
                "Box generation fence capacity reached; refusing an unbounded Workspace allocation"
            )
        if current is not None and generation < current:
            raise BoxPermissionError(STALE_MESSAGE)
        if current == generation:
            return False
        self._current[workspace] = generation
        for older, scopes in list(self._active.items()):
            if older.workspace == workspace and older.generation < generation:
                for scope in scopes:
                    scope.cancel()
        for older, event in list(self._stale.items()):
            if older.workspace == workspace and older.generation < generation:
                event.set()
                del self._stale[older]
        return True

    def is_current(self, placement: Placement) -> bool:
        return self._current.get(placement.workspace) == placement.generation

    def require_current(self, placement: Placement) -> None:
        if not self.is_current(placement):
            raise BoxPermissionError(STALE_MESSAGE)

    @contextlib.contextmanager
    def request(self, placement: Placement, scope: anyio.CancelScope) -> Iterator[None]:
        """Register a request of ``placement`` running in ``scope`` for as long as it runs."""
        scopes = self._active.setdefault(placement, set())
        scopes.add(scope)
        try:
            yield
        finally:
            scopes.discard(scope)
            if not scopes and self._active.get(placement) is scopes:
                del self._active[placement]

    async def wait_stale(self, placement: Placement) -> None:
        """Return once ``placement`` is no longer its workspace's current generation."""
        if not self.is_current(placement):
            return
        event = self._stale.setdefault(placement, anyio.Event())
        await event.wait()

    async def retire(self, placement: Placement, sessions: list[str], delete: Callable[[str], Awaitable[None]]) -> None:
        """Delete the sessions of the workspace's other (older) generations among ``sessions``."""
        current = self._current.get(placement.workspace)
        if current is None:
            return
        live = Placement(placement.workspace, current)
        for session_id in sessions:
            if live.is_older_sibling(session_id):
                await delete(session_id)
