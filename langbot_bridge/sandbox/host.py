"""Where a sandbox object's connection and background work live.

``sbx = await Sandbox.create()`` returns to its caller with a connection that must keep running
(its reader, its heartbeat) and later with background commands and MCP servers. Their task
group cannot be entered in the caller's task: the caller's own cancel scopes would then have
to close in an order it does not know about. So it lives in a task of its own, which the
sandbox owns: ``close()`` ends it and waits for it, and everything started in it ends first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import anyio
import anyio.abc

from boxruntime.errors import BoxRuntimeUnavailableError
from langbot_bridge.connector import Connector

log = logging.getLogger(__name__)


class Host:
    """A task running an optional connector and a task group, until ``close()``."""

    def __init__(self, make_connector: Callable[[], Connector] | None) -> None:
        self._make_connector = make_connector
        self.connector: Connector | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = anyio.Event()
        self._stop = anyio.Event()
        self._failure: BaseException | None = None

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        """Where the sandbox's background work runs (while the host is open)."""
        if self._task_group is None:
            raise BoxRuntimeUnavailableError("the sandbox is closed")
        return self._task_group

    async def open(self) -> None:
        """Start the task and wait until its connector (if any) made its first attempt."""
        if self._task is not None:
            raise RuntimeError("a sandbox host is opened only once")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="langbot_bridge sandbox")
        await self._ready.wait()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            await self.close()
            raise failure

    async def _run(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self._make_connector is not None:
                    self.connector = await stack.enter_async_context(self._make_connector())
                self._task_group = await stack.enter_async_context(anyio.create_task_group())
                self._ready.set()
                await self._stop.wait()
                self._task_group.cancel_scope.cancel()
        except Exception as exc:  # reported by open(); once the sandbox is in use, logged here
            if self._ready.is_set():
                log.error("the sandbox's connection ended: %s", exc, exc_info=exc)
            self._failure = exc
        finally:
            self._task_group = None
            self._ready.set()

    async def close(self) -> None:
        """Stop the background work, close the connector, and wait for all of it."""
        self._stop.set()
        task = self._task
        if task is not None:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])
