"""Commands: processes in a session whose output any number of watchers receive as it comes,
byte for byte, with an optional stdin, signals, a lifetime limit, and their end kept a while.

What E2B's process API needs, in general terms: a command started in a session keeps running
when whoever started it stops listening; anyone can watch it later by its pid (output from then
on, then its end); it can be fed stdin, signalled and listed. The agent runs it (its own
process group, the tree killed at the time limit); output comes through the agent's frames,
or, for a command with a stdin, through its pipes handed to the daemon.

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

from boxruntime.backends.agent.client import AgentProcess
from boxruntime.backends.agent.commands import CommandExit, CommandRequest, Output
from boxruntime.backends.base import sandbox_env
from boxruntime.errors import (
    BoxManagedProcessConflictError,
    BoxManagedProcessNotFoundError,
    BoxRuntimeUnavailableError,
    BoxSandboxError,
)
from boxruntime.models import utcnow
from boxruntime.runtime.pipes import READ_SIZE, ProcessPipes
from boxruntime.runtime.sessions import Session, SessionManager

log = logging.getLogger(__name__)

WATCHER_MAX_BYTES = 32 * 1024 * 1024
KEEP_EXITED_SEC = 30.0  # a late watcher still learns how a command ended
KEEP_EXITED_MAX = 64  # per session
EXIT_DRAIN_SEC = 1.0


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
    proc: AgentProcess
    pid: int
    pipes: ProcessPipes | None = None
    started_at: dt.datetime = field(default_factory=utcnow)
    ended_at: dt.datetime | None = None
    exit: CommandExit | None = None
    lost: Lost | None = None
    watchers: set[Watcher] = field(default_factory=set)
    _agent_end: CommandExit | Lost | None = None
    _agent_ended: anyio.Event = field(default_factory=anyio.Event)

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

    def _on_agent_event(self, event: Output | CommandExit | BaseException) -> None:
        """The agent's events, as they arrive (``AgentProcess.deliver_to``): output goes to the
        watchers at once; the end too, unless the pipes still have to be drained (pump)."""
        if isinstance(event, Output):
            self._publish(event)
            return
        end: CommandExit | Lost
        if isinstance(event, CommandExit):
            end = event
        elif isinstance(event, BoxSandboxError):
            end = Lost(str(event))  # the sandbox went away under the command
        else:
            end = Lost(f"{type(event).__name__}: {event}")
        self._agent_end = end
        self._agent_ended.set()
        if self.pipes is None:
            self._finish(end)

    async def pump(self) -> None:
        """Read the command's own pipes, if the daemon holds them, until it ends; then report the
        end (a task owned by the manager). Output still in the pipes after the exit is drained
        briefly; children that keep the pipes open past that do not hold the end up."""
        drained = anyio.Event()

        async def read_pipes(pipes: ProcessPipes) -> None:
            async def read_one(stream: int) -> None:
                source = pipes.stdout if stream == 1 else pipes.stderr
                try:
                    while data := await source.read(READ_SIZE):
                        self._publish(Output(stream, data))
                except OSError:
                    pass  # a broken pipe or terminal ends its output like EOF

            async with anyio.create_task_group() as readers:
                readers.start_soon(read_one, 1)
                readers.start_soon(read_one, 2)
            drained.set()

        try:
            async with anyio.create_task_group() as tg:
                if self.pipes is not None:
                    tg.start_soon(read_pipes, self.pipes)
                await self._agent_ended.wait()
                if self.pipes is not None:
                    with anyio.move_on_after(EXIT_DRAIN_SEC):
                        await drained.wait()
                tg.cancel_scope.cancel()
        finally:
            if self.pipes is not None:
                self.pipes.close()
            self._finish(self._agent_end or Lost("the daemon stopped watching the command"))

    # ── feeding and signalling ───────────────────────────────────────────

    async def write_stdin(self, data: bytes) -> None:
        if self.pipes is None or not self.pipes.has_stdin:
            raise BoxManagedProcessConflictError(f"process {self.pid} was started without stdin")
        if not self.running:
            raise BoxManagedProcessConflictError(f"process {self.pid} has exited")
        try:
            await self.pipes.write(data)
        except (BrokenPipeError, ConnectionResetError):
            raise BoxManagedProcessConflictError(f"stdin of process {self.pid} is closed") from None

    def close_stdin(self) -> None:
        if self.pipes is not None:
            self.pipes.close_stdin()

    def resize(self, cols: int, rows: int) -> None:
        if self.spec.pty is None or self.pipes is None:
            raise BoxManagedProcessConflictError(f"process {self.pid} has no terminal")
        if self.running:
            self.pipes.set_window(cols, rows)

    async def signal(self, sig: int) -> None:
        """Signal the command's process tree; returns once the signal is sent."""
        if self.running:
            with contextlib.suppress(BoxSandboxError, TimeoutError):
                await self.proc.signal_sent(sig)


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
            piped = spec.stdin or spec.pty is not None  # the daemon writes straight into the pipe
            request = CommandRequest(
                cwd=spec.cwd,
                env=sandbox_env(spec.env),
                argv=spec.argv,
                timeout=spec.timeout,
                stdin=piped,
                handoff=piped,
                keep_on_disconnect=piped,
                notify_started=True,
                make_cwd=spec.make_cwd,
                pty=spec.pty,
            )
            proc = await session.backend.spawn(session.handle, request)
            try:
                pid = await proc.started()
                pipes = None
                if piped:
                    pipes = await ProcessPipes.open(await session.backend.take_pipes(session.handle, proc))
            except BaseException:
                with contextlib.suppress(BoxSandboxError):
                    proc.kill_soon()
                raise
            command = Command(session_id=session_id, spec=spec, proc=proc, pid=pid, pipes=pipes)
            watcher = command.watch()
            proc.deliver_to(command._on_agent_event)
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
