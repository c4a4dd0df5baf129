"""What the platform peers share: an aiohttp server on a free loopback port, a task group for
the peer's own background work, and waiting on "something changed" without sleeping."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

import anyio
import anyio.abc
from aiohttp import web

from integration_tests.daemon import free_port


class PeerServer:
    """Subclasses add their routes in ``routes`` and call ``notify`` when their state changes."""

    def __init__(self) -> None:
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._changed = anyio.Event()
        self.tg: anyio.abc.TaskGroup | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> PeerServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.tg = anyio.create_task_group()
        await self.tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.tg is not None and self._runner is not None
        self.tg.cancel_scope.cancel()
        await self.tg.__aexit__(None, None, None)
        await self.close_sockets()
        await self._runner.cleanup()

    async def close_sockets(self) -> None:
        """Close the WebSockets the peer holds (before the server stops)."""

    def notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, check: Callable[[], bool], timeout: float = 60) -> None:
        with anyio.fail_after(timeout):
            while not check():
                await self._changed.wait()
