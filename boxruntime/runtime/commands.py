"""Commands: processes in a session whose output any number of watchers receive as it comes,
byte for byte, with an optional stdin, signals, a lifetime limit, and their end kept a while.

What E2B's process API needs, in general terms: a command started in a session keeps running
when whoever started it stops listening; anyone can watch it later by its pid (output from then
on, then its end); it can be fed stdin, signalled and listed. The backend runs it as a lasting
process (backends.contract); a pump owned by the manager hands its events to the watchers.

Watchers never slow a command down: each has a bounded buffer, and one that falls more than
``WATCHER_MAX_BYTES`` behind is dropped (its stream ends with ``overflowed``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from boxruntime.backends.contract import Command as SandboxCommand
from boxruntime.backends.contract import CommandExit, Output, Process, TerminalSize
from boxruntime.errors import (
    BoxManagedProcessConflictError,
    BoxManagedProcessNotFoundError,
    BoxRuntimeUnavailableError,
    BoxSandboxError,
)
from boxruntime.models import utcnow
from boxruntime.runtime.sessions import Session, SessionManager

log = logging.getLogger(__name__)

WATCHER_MAX_BYTES = 32 * 1024 * 1024
KEEP_EXITED_SEC = 30.0  # a late watcher still learns how a command ended
KEEP_EXITED_MAX = 64  # per session


@dataclass(frozen=True)
class CommandSpec:
    argv: list[str]
    cwd: str
    env: dict[str, str] = field(default_factory=dict)  # on top of the sandbox's base environment
    stdin: bool = False
    timeout: float | None = None  # seconds the command may live; None: no limit
    tag: str | None = None
    make_cwd: bool = True
    pty: tuple[int, int] | None = None  # (cols, rows): on a terminal; its output comes as stdout


@dataclass(frozen=True, slots=True)
class Lost:
    """The command's end is unknown: its sandbox went away (or the daemon is closing)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Overflowed:
    """This watcher fell too far behind the command's output and was dropped."""


Event = Output | CommandExit | Lost | Overflowed


@dataclass(eq=False)
class Watcher:
    send: MemoryObjectSendStream[Event]
    receive: MemoryObjectReceiveStream[Event]
    queued: int = 0  # bytes of output sent to it and not yet taken

    async def next(self) -> Event:
        """The next event: output as it comes, then the end (CommandExit, Lost or Overflowed).
        Cancelling the wait loses nothing."""
        try:
            return self._took(await self.receive.receive())
        except anyio.EndOfStream:
            return Lost("the command's events ended")

    def next_nowait(self) -> Event | None:
        """The next event if one is waiting already."""
        try:
            return self._took(self.receive.receive_nowait())
        except anyio.WouldBlock:
            return None
        except anyio.EndOfStream:
            return Lost("the command's events ended")

    def _took(self, event: Event) -> Event:
        if isinstance(event, Output):
            self.queued -= len(event.data)
        return event


@dataclass(eq=False)
class Command:
    session_id: str
    spec: CommandSpec
    process: Process
    pid: int
    started_at: dt.datetime = field(default_factory=utcnow)
    ended_at: dt.datetime | None = None
    exit: CommandExit | None = None
    lost: Lost | None = None
    watchers: set[Watcher] = field(default_factory=set)

    @property
    def running(self) -> bool:
        return self.ended_at is None

    # ── watchers ─────────────────────────────────────────────────────────

    def watch(self) -> Watcher:
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        watcher = Watcher(send, receive)
        if self.running:
            self.watchers.add(watcher)
        else:
            send.send_nowait(self.exit or self.lost or Lost("ended"))
            send.close()
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
        watcher.send.close()
        watcher.receive.close()

    def _publish(self, event: Output) -> None:
        for watcher in list(self.watchers):
            if watcher.queued + len(event.data) > WATCHER_MAX_BYTES:
                self._end_watcher(watcher, Overflowed())
                continue
            try:
                watcher.send.send_nowait(event)
                watcher.queued += len(event.data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.watchers.discard(watcher)  # it stopped listening

    def _end_watcher(self, watcher: Watcher, event: Event) -> None:
        self.watchers.discard(watcher)
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            watcher.send.send_nowait(event)
        watcher.send.close()

    def _finish(self, end: CommandExit | Lost) -> None:
        if not self.running:
            return  # already lost with its sandbox
        if isinstance(end, CommandExit):
            self.exit = end
        else:
            self.lost = end
        self.ended_at = utcnow()
        for watcher in list(self.watchers):
            self._end_watcher(watcher, end)

    # ── running ──────────────────────────────────────────────────────────

    async def pump(self) -> None:
        """Hand the command's output to its watchers until it ends, then its end (a task owned by
        the manager)."""
        end: CommandExit | Lost = Lost("the daemon stopped watching the command")
        try:
            async for event in self.process.events():
                if isinstance(event, Output):
                    self._publish(event)
                else:
                    end = event
        except BoxSandboxError as exc:
            end = Lost(str(exc))  # the sandbox went away under the command
        finally:
            with anyio.CancelScope(shield=True):
                await self.process.close()
            self._finish(end)

    # ── feeding and signalling ───────────────────────────────────────────

    async def write_stdin(self, data: bytes) -> None:
        if not (self.spec.stdin or self.spec.pty is not None):
            raise BoxManagedProcessConflictError(f"process {self.pid} was started without stdin")
        if not self.running:
            raise BoxManagedProcessConflictError(f"process {self.pid} has exited")
        try:
            await self.process.write(data)
        except (BrokenPipeError, ConnectionResetError):
            raise BoxManagedProcessConflictError(f"stdin of process {self.pid} is closed") from None

    async def close_stdin(self) -> None:
        if self.running and (self.spec.stdin or self.spec.pty is not None):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, BoxSandboxError):
                await self.process.write(b"", eof=True)

    async def resize(self, cols: int, rows: int) -> None:
        if self.spec.pty is None:
            raise BoxManagedProcessConflictError(f"process {self.pid} has no terminal")
        if self.running:
            with contextlib.suppress(BrokenPipeError, OSError):
                await self.process.resize(TerminalSize(rows=rows, cols=cols))

    async def signal(self, sig: int) -> None:
        """Signal the command's process tree; returns once the signal is sent (for SIGKILL,
        once the process is gone)."""
        if self.running:
            with contextlib.suppress(BoxSandboxError, TimeoutError):
                await self.process.signal(sig, until_gone=True)


class CommandManager:
    """Starts commands, finds them by session and pid, and owns the tasks that pump them."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions
        self._by_session: dict[str, dict[int, Command]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        sessions.on_remove.append(self._session_removed)

    async def run(self) -> None:
        """Own the pumps; runs until its owner cancels it (the runtime's background tasks)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    def commands(self, session_id: str) -> list[Command]:
        self._sessions.get(session_id)  # BoxSessionNotFoundError for an unknown session
        self._forget_old_exits(session_id)
        return list(self._by_session.get(session_id, {}).values())

    def get(self, session_id: str, pid: int) -> Command:
        for command in self.commands(session_id):
            if command.pid == pid:
                return command
        raise BoxManagedProcessNotFoundError(f"process with pid {pid} not found in session {session_id}")

    def find_tag(self, session_id: str, tag: str) -> Command:
        for command in self.commands(session_id):
            if command.spec.tag == tag and command.running:
                return command
        raise BoxManagedProcessNotFoundError(f"process with tag {tag} not found in session {session_id}")

    async def start(self, session_id: str, spec: CommandSpec) -> tuple[Command, Watcher]:
        """Start ``spec`` in the session; the returned watcher sees all of its output."""
        tg = self._tg
        if tg is None:
            raise BoxRuntimeUnavailableError("the runtime is not running its background tasks")
        async with self._sessions.lease_existing(session_id) as session:
            sandbox_command = SandboxCommand(
                cwd=spec.cwd,
                env=spec.env,
                argv=spec.argv,
                timeout=spec.timeout,
                stdin=spec.stdin,
                terminal=TerminalSize(rows=spec.pty[1], cols=spec.pty[0]) if spec.pty is not None else None,
                make_cwd=spec.make_cwd,
            )
            process = await session.backend.start_command(session.handle, sandbox_command, lasting=True)
            try:
                pid = await process.started()
            except BaseException:
                process.cancel()
                with anyio.CancelScope(shield=True):
                    await process.close()
                raise
            command = Command(session_id=session_id, spec=spec, process=process, pid=pid)
            watcher = command.watch()
            self._register(session, command)
            tg.start_soon(self._pump, session, command, name=f"command-{session_id}-{pid}")
        return command, watcher

    def _register(self, session: Session, command: Command) -> None:
        self._forget_old_exits(session.session_id)
        commands = self._by_session.setdefault(session.session_id, {})
        if not commands:  # a running command keeps its session from being reaped as idle
            session.keepalive.append(lambda: any(c.running for c in commands.values()))
        commands[command.pid] = command  # a pid the sandbox reuses replaces the ended command

    async def _pump(self, session: Session, command: Command) -> None:
        await command.pump()
        session.touch()

    def _forget_old_exits(self, session_id: str) -> None:
        commands = self._by_session.get(session_id, {})
        cutoff = utcnow() - dt.timedelta(seconds=KEEP_EXITED_SEC)
        ended = sorted((c for c in commands.values() if c.ended_at is not None), key=lambda c: c.ended_at or cutoff)
        for index, command in enumerate(ended):
            if (command.ended_at or cutoff) <= cutoff or index < len(ended) - KEEP_EXITED_MAX:
                commands.pop(command.pid, None)

    async def _session_removed(self, session: Session) -> None:
        # The sandbox goes next, and every process in it: watchers learn it now, whatever the
        # agent still manages to report (their pumps end when its connection closes).
        for command in self._by_session.pop(session.session_id, {}).values():
            command._finish(Lost(f"session {session.session_id} was removed"))

    def iter_running(self) -> Iterator[Command]:
        for commands in self._by_session.values():
            yield from (c for c in commands.values() if c.running)
