"""Managed processes: long-lived processes in a session (MCP servers), with a stdio relay.

A process runs under the session's agent (so it works on every agent backend) in its own
process group: an exec timeout never touches it. Its stdout is split into lines; while a relay
client is attached each line goes to it, otherwise the lines are kept (the last 1 MiB / 1000
lines) and delivered first on the next attach — output is not lost while nobody listens.
stderr feeds a rolling preview. Stop = close stdin, SIGTERM, SIGKILL after 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from boxruntime.backends.agent.client import AgentProcess
from boxruntime.backends.agent.commands import CommandExit, CommandRequest
from boxruntime.errors import (
    BoxManagedProcessConflictError,
    BoxManagedProcessNotFoundError,
    BoxSandboxError,
)
from boxruntime.models import ManagedProcessInfo, ManagedProcessSpec, ManagedProcessStatus, utcnow
from boxruntime.runtime.pipes import READ_SIZE, ProcessPipes
from boxruntime.runtime.sessions import Session, SessionManager

log = logging.getLogger(__name__)

REPLAY_MAX_BYTES = 1024 * 1024
REPLAY_MAX_LINES = 1000
STDERR_PREVIEW_CHARS = 4000
MAX_LINE_BYTES = 16 * 1024 * 1024
STOP_GRACE_SEC = 5.0
MAX_EXITED_PER_SESSION = 64
EXIT_DRAIN_SEC = 1.0


class ClientReplaced(Exception):
    """A newer relay client attached to the same process."""


@dataclass(eq=False)
class Attachment:
    """One relay client's view of a process: the lines meant for it, in order."""

    send: MemoryObjectSendStream[str]
    receive: MemoryObjectReceiveStream[str]
    replaced: bool = False


@dataclass(eq=False)
class ManagedProcess:
    session_id: str
    spec: ManagedProcessSpec
    proc: AgentProcess
    pipes: ProcessPipes
    started_at: dt.datetime = field(default_factory=utcnow)
    exited_at: dt.datetime | None = None
    exit_code: int | None = None
    stderr_preview: str = ""
    replay: deque[str] = field(default_factory=deque)
    replay_bytes: int = 0
    replay_dropped: int = 0
    attachment: Attachment | None = None
    exited: anyio.Event = field(default_factory=anyio.Event)
    _partial: bytearray = field(default_factory=bytearray)

    @property
    def running(self) -> bool:
        return self.exited_at is None

    def info(self) -> ManagedProcessInfo:
        return ManagedProcessInfo(
            session_id=self.session_id,
            process_id=self.spec.process_id,
            status=ManagedProcessStatus.RUNNING if self.running else ManagedProcessStatus.EXITED,
            command=self.spec.command,
            args=self.spec.args,
            cwd=self.spec.cwd,
            env_keys=sorted(self.spec.env),
            attached=self.attachment is not None,
            started_at=self.started_at,
            exited_at=self.exited_at,
            exit_code=self.exit_code,
            stderr_preview=self.stderr_preview,
            pending_output_bytes=self.replay_bytes,
        )

    # ── output ───────────────────────────────────────────────────────────

    def _lines(self, data: bytes) -> list[bytes]:
        self._partial += data
        lines = []
        while True:
            end = self._partial.find(b"\n")
            if end < 0:
                break
            lines.append(bytes(self._partial[:end]))
            del self._partial[: end + 1]
        while len(self._partial) > MAX_LINE_BYTES:  # a "line" this long is no message; pass it on in pieces
            lines.append(bytes(self._partial[:MAX_LINE_BYTES]))
            del self._partial[:MAX_LINE_BYTES]
        return lines

    async def _deliver(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        if self.attachment is not None:
            # Waits while the client's buffer is full: a slow client slows the pump down.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.attachment.send.send(text)
                return
        self._keep(text)

    def _keep(self, text: str) -> None:
        self.replay.append(text)
        self.replay_bytes += len(text.encode("utf-8"))
        while len(self.replay) > REPLAY_MAX_LINES or self.replay_bytes > REPLAY_MAX_BYTES:
            dropped = self.replay.popleft()
            self.replay_bytes -= len(dropped.encode("utf-8"))
            self.replay_dropped += 1

    def _stderr(self, data: bytes) -> None:
        self.stderr_preview = (self.stderr_preview + data.decode("utf-8", "replace"))[-STDERR_PREVIEW_CHARS:]

    async def _exit(self, event: CommandExit) -> None:
        if self._partial:
            await self._deliver(bytes(self._partial))
            self._partial.clear()
        self.exit_code = event.code
        self.exited_at = utcnow()
        self.exited.set()
        if self.attachment is not None:
            self.attachment.send.close()  # the client reads what is left, then its relay ends

    async def pump(self) -> None:
        """Read stdout and stderr straight from the pipes until the process exits (a task owned
        by the manager). Output still in the pipes after the exit is drained briefly; children
        that keep the pipes open past that do not hold the exit up."""
        drained = anyio.Event()

        async def read_stdout() -> None:
            while data := await self.pipes.stdout.read(READ_SIZE):
                for line in self._lines(data):
                    await self._deliver(line)

        async def read_stderr() -> None:
            while data := await self.pipes.stderr.read(READ_SIZE):
                self._stderr(data)

        async def read_all() -> None:
            async with anyio.create_task_group() as readers:
                readers.start_soon(read_stdout)
                readers.start_soon(read_stderr)
            drained.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_all)
                exit = await self._wait_for_exit()
                with anyio.move_on_after(EXIT_DRAIN_SEC):
                    await drained.wait()
                tg.cancel_scope.cancel()
            await self._exit(exit)
        finally:
            self.pipes.close()

    async def _wait_for_exit(self) -> CommandExit:
        try:
            async for event in self.proc.events():
                if isinstance(event, CommandExit):
                    return event
        except BoxSandboxError as exc:  # the sandbox went away under the process
            self._stderr(f"\n[boxruntime: {exc}]".encode())
        return CommandExit(None, None, "signal", 0, None, None, 0, 0)

    # ── relay side ───────────────────────────────────────────────────────

    def attach(self) -> Attachment:
        """Become the one attached client; a previous one is told it was replaced."""
        if self.attachment is not None:
            self.attachment.replaced = True
            self.attachment.send.close()
        # Room for the whole replay, then live lines wait for the client (see _deliver).
        send, receive = anyio.create_memory_object_stream[str](REPLAY_MAX_LINES * 2)
        while self.replay:
            send.send_nowait(self.replay.popleft())
        self.replay_bytes = 0
        attachment = Attachment(send, receive)
        self.attachment = attachment
        if not self.running:
            send.close()
        return attachment

    def release(self, attachment: Attachment) -> None:
        """The client has gone: it no longer counts as attached, and new output is kept for
        the next one. ``detach`` then takes back what it was sent but never read."""
        if self.attachment is attachment:
            self.attachment = None

    def detach(self, attachment: Attachment) -> None:
        self.release(attachment)
        # Lines handed to this client but not yet sent go back to the front of the replay.
        pending = []
        with contextlib.suppress(anyio.EndOfStream, anyio.WouldBlock, anyio.ClosedResourceError):
            while True:
                pending.append(attachment.receive.receive_nowait())
        attachment.receive.close()
        if not attachment.replaced:
            for line in reversed(pending):
                self.replay.appendleft(line)
                self.replay_bytes += len(line.encode("utf-8"))

    async def write_line(self, text: str) -> None:
        not_running = BoxManagedProcessConflictError(f"managed process {self.spec.process_id} is not running")
        if not self.running:
            raise not_running
        try:
            await self.pipes.write(text.encode("utf-8") + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            raise not_running from None

    # ── stopping ─────────────────────────────────────────────────────────

    async def stop(self) -> None:
        if not self.running:
            return
        self.pipes.close_stdin()
        with contextlib.suppress(BoxSandboxError):
            await self.proc.signal(signal.SIGTERM)
        with anyio.move_on_after(STOP_GRACE_SEC):
            await self.exited.wait()
        if self.running:
            with contextlib.suppress(BoxSandboxError):
                await self.proc.signal(signal.SIGKILL)
            with anyio.move_on_after(STOP_GRACE_SEC):
                await self.exited.wait()


def process_request(spec: ManagedProcessSpec) -> CommandRequest:
    return CommandRequest(
        cwd=spec.cwd,
        env={"PYTHONUNBUFFERED": "1", **spec.env},  # the backend adds its base environment
        argv=[spec.command, *spec.args],
        stdin=True,
        notify_started=True,
        handoff=True,
        keep_on_disconnect=True,  # survives a lost agent connection, output kept by the agent
    )


class ProcessManager:
    """Starts, finds and stops managed processes; owns the tasks that read their output."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions
        self._tasks: set[asyncio.Task[None]] = set()
        sessions.on_remove.append(self.stop_session)

    def running_count(self) -> int:
        return sum(1 for s in self._sessions.sessions() for p in s.processes.values() if p.running)

    def get(self, session_id: str, process_id: str) -> ManagedProcess:
        session = self._sessions.get(session_id)
        process = session.processes.get(process_id)
        if process is None:
            raise BoxManagedProcessNotFoundError(
                f"session {session_id} has no managed process with process_id={process_id}"
            )
        return process

    async def start(self, session_id: str, spec: ManagedProcessSpec) -> ManagedProcessInfo:
        async with self._sessions.lease_existing(session_id) as session:
            previous = session.processes.get(spec.process_id)
            if previous is not None:
                await previous.stop()  # same process_id replaces
            proc = await session.backend.spawn(session.handle, process_request(spec))
            await proc.started()
            pipes = await ProcessPipes.open(await session.backend.take_pipes(session.handle, proc))
            process = ManagedProcess(session_id=session_id, spec=spec, proc=proc, pipes=pipes)
            session.processes[spec.process_id] = process
            self._forget_old_exits(session)
            task = asyncio.create_task(self._pump(session, process), name=f"mp-{session_id}-{spec.process_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info("session %s: managed process %s started (%s)", session_id, spec.process_id, spec.command)
        return process.info()

    async def _pump(self, session: Session, process: ManagedProcess) -> None:
        await process.pump()
        session.touch()
        log.info(
            "session %s: managed process %s exited with %s",
            process.session_id, process.spec.process_id, process.exit_code,
        )  # fmt: skip

    @staticmethod
    def _forget_old_exits(session: Session) -> None:
        exited = [pid for pid, p in session.processes.items() if not p.running]
        for pid in exited[:-MAX_EXITED_PER_SESSION]:
            del session.processes[pid]

    async def stop(self, session_id: str, process_id: str) -> None:
        async with self._sessions.lease_existing(session_id) as session:
            process = self.get(session_id, process_id)
            await process.stop()
            session.processes.pop(process_id, None)

    async def stop_session(self, session: Session) -> None:
        async with anyio.create_task_group() as tg:
            for process in list(session.processes.values()):
                tg.start_soon(process.stop)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def relay_lines(attachment: Attachment) -> AsyncIterator[str]:
    """The lines for one relay client; raises ClientReplaced if another client took over."""
    async for line in attachment.receive:
        yield line
    if attachment.replaced:
        raise ClientReplaced()
