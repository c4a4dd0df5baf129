"""A watched directory in an E2B sandbox as the contract's ``Watch``: envd's polled watcher.

envd has two ways to watch: a server stream (``WatchDir``, the async SDK's) and a watcher that
is polled (``CreateWatcher`` / ``GetWatcherEvents`` / ``RemoveWatcher``, the sync SDK's). The
stream needs a reader running all the time; the polled one needs nothing between calls, so it is
used: ``next_batch`` polls, every 10 ms at first and more slowly (up to 250 ms) while nothing
happens. Each poll is shielded, so cancelling a wait loses no event envd already handed over.
``close`` cannot wait for envd (it is not async): the watcher is removed in the sandbox by the
backend's next call on that sandbox (or its minute upkeep).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from connectrpc.errors import ConnectError
from e2b.envd.filesystem import filesystem_connect, filesystem_pb

from boxruntime.backends.contract import FileChange, WatchKind
from boxruntime.errors import BoxSandboxError

POLL_FIRST_SEC = 0.01
POLL_MAX_SEC = 0.25
POLL_TIMEOUT_MS = 30_000
KINDS: dict[filesystem_pb.EventType, WatchKind] = {
    filesystem_pb.EventType.CREATE: "create",
    filesystem_pb.EventType.WRITE: "write",
    filesystem_pb.EventType.REMOVE: "remove",
    filesystem_pb.EventType.RENAME: "rename",
    filesystem_pb.EventType.CHMOD: "chmod",
}


class PolledWatch:
    def __init__(
        self, rpc: filesystem_connect.FilesystemClient, watcher_id: str, on_close: Callable[[str], None]
    ) -> None:
        self._rpc = rpc
        self.watcher_id = watcher_id
        self._on_close = on_close
        self._received: list[FileChange] = []
        self._closed = False

    async def next_batch(self) -> list[FileChange]:
        pause = POLL_FIRST_SEC
        while not self._received:
            if self._closed:
                raise BoxSandboxError("the watch is closed")
            with anyio.CancelScope(shield=True):
                await self._poll()
            if not self._received:
                await anyio.sleep(pause)
                pause = min(POLL_MAX_SEC, pause * 1.5)
        return self.pending()

    async def _poll(self) -> None:
        request = filesystem_pb.GetWatcherEventsRequest(watcher_id=self.watcher_id)
        try:
            answer = await self._rpc.get_watcher_events(request, timeout_ms=POLL_TIMEOUT_MS)
        except ConnectError as exc:
            raise BoxSandboxError(f"watching in the E2B sandbox: {exc.message}") from None
        self._received += [FileChange(e.name, KINDS[e.type]) for e in answer.events if e.type in KINDS]

    def pending(self) -> list[FileChange]:
        taken, self._received = self._received, []
        return taken

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self.watcher_id)
