"""A command under a sandbox's agent, as the contract's ``Process``.

Its events reach a queue by callbacks, never through a task: output either rides in the agent's
frames (``framed``) or comes straight from the process's own pipes, which the agent handed to
the daemon (``piped``: relay and stdin data never pass through the agent). In the piped form
the exit is held back until both output pipes are at their end, or ``EXIT_DRAIN_SEC`` after the
exit when children keep them open; and reading pauses while the consumer is far behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from boxruntime.backends.agent.client import AgentOpError, AgentProcess
from boxruntime.backends.agent.pipes import ProcessPipes
from boxruntime.backends.contract import CommandExit, Output, ProcessEvent, TerminalSize
from boxruntime.errors import BoxSandboxError

EXIT_DRAIN_SEC = 1.0
HIGH_WATER = 4 * 1024 * 1024  # bytes queued before the pipes are paused
LOW_WATER = 1024 * 1024


class AgentCommand:
    def __init__(self, proc: AgentProcess, *, piped: bool) -> None:
        self._proc = proc
        self._piped = piped  # its output comes through the pipes given to ``use_pipes``
        self._pipes: ProcessPipes | None = None
        self._queue: asyncio.Queue[ProcessEvent | BaseException] = asyncio.Queue()
        self._queued = 0
        self._paused = False
        self._open_streams = {1, 2}
        self._held_exit: CommandExit | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._ended = False
        proc.deliver_to(self._from_agent)

    def use_pipes(self, pipes: ProcessPipes) -> None:
        """The process's own pipes (handed over by the agent), opened with ``on_pipe_data``."""
        self._pipes = pipes
        if self._paused:
            pipes.pause_reading()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    async def started(self) -> int:
        return await self._proc.started()

    # ── events in ────────────────────────────────────────────────────────

    def _from_agent(self, event: ProcessEvent | BaseException) -> None:
        if self._ended:
            return
        if isinstance(event, CommandExit) and self._piped and self._open_streams:
            self._held_exit = event  # output may still be in the pipes
            loop = asyncio.get_running_loop()
            self._drain_timer = loop.call_later(EXIT_DRAIN_SEC, self._release_exit)
            return
        self._put(event)

    def on_pipe_data(self, stream: int, data: bytes) -> None:
        """A pipe's data (``b""``: its end), from the pipe's reader callback."""
        if self._ended:
            return
        if data:
            self._put(Output(stream, data))
            return
        self._open_streams.discard(stream)
        if not self._open_streams and self._held_exit is not None:
            self._release_exit()

    def _release_exit(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()  # a timer handle, not a task: nothing runs any more
            self._drain_timer = None
        if self._held_exit is not None and not self._ended:
            exit, self._held_exit = self._held_exit, None
            self._put(exit)

    def _put(self, event: ProcessEvent | BaseException) -> None:
        if isinstance(event, CommandExit | BaseException):
            self._ended = True
        elif isinstance(event, Output):
            self._queued += len(event.data)
            if self._piped and self._queued > HIGH_WATER and not self._paused:
                self._paused = True
                if self._pipes is not None:
                    self._pipes.pause_reading()
        self._queue.put_nowait(event)

    # ── events out ───────────────────────────────────────────────────────

    async def events(self) -> AsyncIterator[ProcessEvent]:
        while True:
            event = await self._queue.get()
            if isinstance(event, BaseException):
                self._queue.put_nowait(event)  # stays broken for whoever asks next
                raise event
            if isinstance(event, Output):
                self._queued -= len(event.data)
                if self._paused and self._queued < LOW_WATER and self._pipes is not None:
                    self._paused = False
                    self._pipes.resume_reading()
            yield event
            if isinstance(event, CommandExit):
                return

    # ── the process ──────────────────────────────────────────────────────

    @property
    def kept(self) -> bool:
        """A lasting process whose pipes the daemon holds: it outlives the daemon."""
        return self._piped and self._proc.keep

    @property
    def ref(self) -> str:
        """The agent's id of the process: how a successor daemon finds a kept one again."""
        return self._proc.id

    async def write(self, data: bytes, eof: bool = False) -> None:
        if self._pipes is not None:
            if data:
                await self._pipes.write(data)
            if eof and self._pipes.terminal is None:
                self._pipes.close_stdin()
                if self._proc.keep:
                    # The agent keeps a copy of a kept process's stdin (so it outlives the
                    # daemon): stdin ends only once that copy is closed too.
                    with contextlib.suppress(AgentOpError):  # it has exited meanwhile
                        await self._proc.write_input(b"", eof=True)
            return
        await self._proc.write_input(data, eof)

    async def resize(self, size: TerminalSize) -> None:
        if self._pipes is not None:
            self._pipes.set_window(size.rows, size.cols)
            return
        await self._proc.resize(size.rows, size.cols)

    async def signal(self, sig: int, *, until_gone: bool = False, cancel: bool = False) -> None:
        if until_gone:
            await self._proc.signal_sent(sig, cancel=cancel)
        else:
            await self._proc.signal(sig, cancel=cancel)

    def cancel(self) -> None:
        with contextlib.suppress(BoxSandboxError):
            self._proc.kill_soon()

    async def close(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self._pipes is not None:
            self._pipes.close()
